"""Image files from outside the data set (PNG, JPEG, TIFF, DICOM, ...) turned into what the model expects.

Files are untrusted. An image's declared size is read from its header and checked against ``max_pixels``
(default 50 MP, far above any radiograph: a 43 x 43 cm detector at 0.1 mm is 18.5 MP) before any pixel
is decoded, so a decompression bomb (a small PNG declaring 15,000 x 15,000 pixels) costs neither memory nor time.

A full-size image is made square the way MedMNIST made the data set (``preprocess`` of its entry in
data/datasets.py): ChestMNIST's NIH images are square and were resized, so cxrlab resizes; PneumoniaMNIST's
source images are not square and were center-cropped to their short side first, so cxrlab crops the same way
instead of squashing the image.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrlab.errors import DamagedImage, ImageFileError, ImageTooLarge, UnsupportedImage

DEFAULT_MAX_PIXELS = 50_000_000
PREPROCESSING = ("resize", "center-crop")


def to_gray_uint8(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 grayscale array. High-bit-depth images are min-max scaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = values.min(), values.max()
        scaled = (values - low) / (high - low) * 255 if high > low else np.zeros_like(values)
        return (scaled + 0.5).astype(np.uint8)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))  # X-ray background is black
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def center_crop(gray: np.ndarray) -> np.ndarray:
    """The largest centered square (side = the short side), as MedMNIST cropped PneumoniaMNIST's sources."""
    h, w = gray.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return gray[top : top + side, left : left + side]


def to_model_size(gray: np.ndarray, size: int, preprocess: str = "resize") -> np.ndarray:
    """Make the image square as the data set was made (``preprocess``), then resize it to size x size (bicubic)."""
    if preprocess not in PREPROCESSING:
        raise ValueError(f"unknown preprocessing {preprocess!r}")
    if preprocess == "center-crop":
        gray = center_crop(gray)
    if gray.shape == (size, size):
        return gray
    return np.asarray(Image.fromarray(gray).resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def check_pixels(name: str, width: int, height: int, frames: int, max_pixels: int) -> None:
    total = width * height * frames
    if total > max_pixels:
        shape = f"{width} x {height} px" + (f" x {frames} frames" if frames > 1 else "")
        raise ImageTooLarge(f"{name}: the image is {shape} ({total / 1e6:,.1f} megapixels), over the limit of "
                            f"{max_pixels / 1e6:g} megapixels; no chest radiograph is that large")


def load_image(path: str | Path, size: int, preprocess: str = "resize", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageFileError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImageFileError(f"{path}: is a folder, not an image file") from None
    except OSError as exc:
        raise ImageFileError(f"{path}: cannot read ({exc.strerror})") from None
    return decode_image(data, str(path), size, preprocess, max_pixels)


def is_dicom(data: bytes, name: str = "") -> bool:
    return data[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom"))


def decode_image(data: bytes, name: str, size: int, preprocess: str = "resize", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Bytes of a PNG, JPEG, TIFF, ... or DICOM file -> uint8 (size, size) grayscale, prepared as the data set was.
    UnsupportedImage when the bytes are no image format read here, DamagedImage when a known format fails,
    ImageTooLarge when the image declares more than ``max_pixels`` pixels (checked before decoding)."""
    gray = decode_dicom(data, name, max_pixels) if is_dicom(data, name) else _decode_pillow(data, name, max_pixels, size)
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise DamagedImage(f"{name}: unexpected image shape {gray.shape}")
    return np.array(to_model_size(gray, size, preprocess))  # a writable copy: torch.from_numpy warns on read-only arrays


def _decode_pillow(data: bytes, name: str, max_pixels: int, size: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides, below
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                check_pixels(name, image.width, image.height, 1, max_pixels)  # only the first frame is decoded
                if image.format == "JPEG":
                    image.draft("L", (size, size))  # JPEG decodes at 1/2, 1/4 or 1/8 scale when that is still >= size
                image.load()
                return to_gray_uint8(image)
    except Image.DecompressionBombError as exc:  # Pillow's own guard (2 x Image.MAX_IMAGE_PIXELS) fires in open(), before ours
        raise ImageTooLarge(f"{name}: {exc} (cxrlab's limit: {max_pixels / 1e6:g} megapixels)") from None
    except UnidentifiedImageError:
        raise UnsupportedImage(f"{name}: not an image file (PNG, JPEG, BMP, TIFF or DICOM)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DamagedImage(f"{name}: damaged or truncated image ({exc})") from None


def decode_dicom(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """DICOM -> uint8: modality LUT (rescale), then the file's VOI window (Window Center/Width or VOI LUT) when it
    has one, else its full range, scaled to 0-255; MONOCHROME1 (white = low values) inverted; first frame only.
    Rows x Columns x frames from the header must be within ``max_pixels``."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as exc:  # pydicom raises many types for broken files
        raise DamagedImage(f"{name}: cannot read the DICOM file ({type(exc).__name__}: {exc})") from None
    check_pixels(name, columns, rows, frames, max_pixels)  # the header's declared size, before any pixel is decoded
    try:
        pixels = pixel_array(ds, index=0) if frames > 1 else ds.pixel_array  # only the first frame is decoded
    except Exception as exc:  # missing pixel data, codecs, broken data
        raise DamagedImage(f"{name}: cannot decode the DICOM image ({type(exc).__name__}: {exc})") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if ds.get("SamplesPerPixel", 1) != 1:
        return np.asarray(Image.fromarray(np.asarray(pixels, dtype=np.uint8)).convert("L"), dtype=np.uint8)
    values = apply_modality_lut(pixels, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds)
    values = np.asarray(values, dtype=np.float64)
    low, high = values.min(), values.max()
    scaled = (values - low) / (high - low) * 255 if high > low else np.zeros_like(values)
    if photometric == "MONOCHROME1":
        scaled = 255 - scaled
    return (scaled + 0.5).astype(np.uint8)
