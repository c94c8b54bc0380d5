"""Image files from outside the dataset (PNG, JPEG, ...) turned into what the model expects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrlab.errors import ImageFileError


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
        with Image.open(path) as image:
            image.load()
            gray = to_gray_uint8(image)
    except FileNotFoundError:
        raise ImageFileError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise ImageFileError(f"{path}: not an image file Pillow can read (PNG, JPEG, BMP, TIFF, ...)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageFileError(f"{path}: damaged or truncated image ({exc})") from None
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise ImageFileError(f"{path}: unexpected image shape {gray.shape}")
    return resize_square(gray, size)
