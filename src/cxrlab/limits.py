"""The bounds on untrusted input, with their defaults and help, in one table that the image decoders, the service and
the command line's flags all read. Imports nothing heavy, so that building the command line stays quick."""

from __future__ import annotations

DEFAULT_MAX_PIXELS = 50_000_000  # declared width x height x frames of one image, refused before decoding

# name: (type, default, metavar, help)
LIMITS = {
    "max_upload_mb": (float, 10.0, "MB", "largest accepted request body in MB"),
    "max_files": (int, 16, "N", "most files in one /predict request"),
    "max_request_mp": (float, 100.0, "MP", "most decoded megapixels in one request, all files together"),
    "max_image_mp": (
        float,
        DEFAULT_MAX_PIXELS / 1e6,
        "MP",
        "refuse images that declare more megapixels (width x height x frames) than this, before decoding them",
    ),
}
EXPLAIN_SLOTS = 1  # Grad-CAM requests at once in the service (it hooks the model, so they run one at a time anyway)


def default(name: str):
    return LIMITS[name][1]
