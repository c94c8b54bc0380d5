"""Image files from outside the dataset (PNG, JPEG, ...) turned into what the model expects."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrlab.errors import DamagedImage, ImageFileError, UnsupportedImage


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


def resize_square(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize the whole image to size x size (bicubic), as MedMNIST downsized the square NIH images."""
    if gray.shape == (size, size):
        return gray
    return np.asarray(Image.fromarray(gray).resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def load_image(path: str | Path, size: int) -> np.ndarray:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageFileError(f"{path}: file not found") from None
    except OSError as exc:
        raise ImageFileError(f"{path}: cannot read ({exc.strerror})") from None
    return decode_image(data, str(path), size)


def is_dicom(data: bytes, name: str = "") -> bool:
    return data[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom"))


def decode_image(data: bytes, name: str, size: int) -> np.ndarray:
    """Bytes of a PNG, JPEG, TIFF, ... or DICOM file -> uint8 (size, size) grayscale.
    UnsupportedImage when the bytes are no image format read here, DamagedImage when a known format fails."""
    gray = decode_dicom(data, name) if is_dicom(data, name) else _decode_pillow(data, name)
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise DamagedImage(f"{name}: unexpected image shape {gray.shape}")
    return np.array(resize_square(gray, size))  # a writable copy: torch.from_numpy warns on read-only arrays


def _decode_pillow(data: bytes, name: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return to_gray_uint8(image)
    except UnidentifiedImageError:
        raise UnsupportedImage(f"{name}: not an image file (PNG, JPEG, BMP, TIFF or DICOM)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DamagedImage(f"{name}: damaged or truncated image ({exc})") from None


def decode_dicom(data: bytes, name: str) -> np.ndarray:
    """DICOM -> uint8: modality LUT (rescale), then the file's VOI window (Window Center/Width or VOI LUT) when it
    has one, else its full range, scaled to 0-255; MONOCHROME1 (white = low values) inverted; first frame only."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for broken files, missing pixel data or codecs
        raise DamagedImage(f"{name}: cannot decode the DICOM image ({type(exc).__name__}: {exc})") from None
    if getattr(ds, "NumberOfFrames", 1) not in (None, "", 1) and pixels.ndim >= 3 and ds.get("SamplesPerPixel", 1) == 1:
        pixels = pixels[0]
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
