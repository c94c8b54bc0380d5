"""Images that are not chest radiographs, made only from what installed packages ship (nothing is downloaded), to
measure how many of them a run's out-of-distribution check flags.

- synthetic: uniform noise, constants, gradients, shapes, text (drawn with Pillow)
- photographs: scikit-image's sample photographs and its Labeled Faces in the Wild subset
- CT and MR slices (and test patterns): pydicom's test files that decode, and scikit-image's Shepp-Logan phantom
- digits: scikit-learn's handwritten digits

Every image goes through the upload path's preparation (grayscale, made square as the data set was, resized), so
the check sees what ``predict`` and the service would feed the model. A constant image is refused before it
reaches the model (BlankImage); the constants here measure the check behind that refusal.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cxrlab.data.images import prepare, to_gray_uint8
from cxrlab.errors import ImageFileError

SYNTHETIC, REAL = "synthetic", "real, not chest radiographs"


def _synthetic(rng: np.random.Generator, n: int = 40, side: int = 256) -> list[np.ndarray]:
    images = []
    for i in range(n):
        images.append(rng.integers(0, 256, (side, side), dtype=np.uint8))  # uniform noise
        images.append(np.full((side, side), int(255 * i / (n - 1)), np.uint8))  # constants, black to white
        ramp = np.linspace(0, 255, side, dtype=np.float32)
        angle = np.pi * i / n
        grid = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
        images.append((255 * (grid - grid.min()) / (np.ptp(grid) or 1)).astype(np.uint8))  # gradients at angles
        canvas = Image.new("L", (side, side), int(rng.integers(0, 256)))
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(1, 6))):  # shapes
            box = sorted(rng.integers(0, side, 2)), sorted(rng.integers(0, side, 2))
            xy = [box[0][0], box[1][0], box[0][1] + 1, box[1][1] + 1]
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(xy, fill=int(rng.integers(0, 256)))
        images.append(np.asarray(canvas))
        page = Image.new("L", (side, side), 255 if i % 2 else 0)
        draw = ImageDraw.Draw(page)
        for line in range(int(rng.integers(3, 12))):  # text
            draw.text((8, 8 + 20 * line), "".join(rng.choice(list("abcdefghij KLMNOP 0123456789"), 24)), fill=0 if i % 2 else 255)
        images.append(np.asarray(page))
    return images


def _photographs() -> list[np.ndarray]:
    import skimage.data

    folder = os.path.dirname(skimage.data.__file__)
    images = []
    for path in sorted(glob.glob(os.path.join(folder, "*.png")) + glob.glob(os.path.join(folder, "*.jpg"))):
        if os.path.basename(path) == "phantom.png":
            continue  # a CT phantom, counted with the CT slices
        with Image.open(path) as image:
            images.append(to_gray_uint8(image))
    faces = np.load(os.path.join(folder, "lfw_subset.npy"))  # 200 faces, 25 x 25, floats in [0, 1]
    images += [(face * 255).astype(np.uint8) for face in faces]
    return images


def _ct_mr() -> list[np.ndarray]:
    import pydicom
    import skimage.data

    from cxrlab.data.images import decode_full

    images = []
    with Image.open(os.path.join(os.path.dirname(skimage.data.__file__), "phantom.png")) as image:
        images.append(to_gray_uint8(image))
    folder = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
    quiet = logging.getLogger("pydicom")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # the test files are deliberately odd; pydicom logs and warns about each
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for path in sorted(glob.glob(os.path.join(folder, "**", "*.dcm"), recursive=True)):
                try:
                    images.append(decode_full(Path(path).read_bytes(), os.path.basename(path)))
                except ImageFileError:
                    continue  # those that cannot be decoded never reach the model either
    finally:  # pydicom's logger as it was, also when an exception escapes
        quiet.setLevel(level)
    return images


def _digits() -> list[np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits().images  # 1,797 handwritten digits, 8 x 8, values 0-16
    return [(d * 255 / 16).astype(np.uint8) for d in digits[::4]]


@functools.lru_cache(maxsize=4)  # made once per process: every run of a study measures the same sets
def ood_sets(size: int, preprocess: str = "resize", seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """{group: {set name: uint8 (N, size, size)}}, each image prepared as an upload would be (treat as read-only)."""
    made = {
        SYNTHETIC: {"noise, constants, gradients, shapes, text": _synthetic(np.random.default_rng(seed))},
        REAL: {
            "photographs (scikit-image)": _photographs(),
            "CT and MR slices (pydicom, scikit-image)": _ct_mr(),
            "handwritten digits (scikit-learn)": _digits(),
        },
    }
    return {
        group: {name: np.stack([prepare(im, size, preprocess) for im in images]) for name, images in sets.items()}
        for group, sets in made.items()
    }


def with_ood_sets(images: np.ndarray, size: int, preprocess: str = "resize", seed: int = 0) -> np.ndarray:
    """``images`` (uint8 (N, size, size), e.g. val) followed by every out-of-distribution set: what an exported
    check is compared on."""
    sets = ood_sets(size, preprocess, seed)
    return np.concatenate([images] + [group_images for group in sets.values() for group_images in group.values()])
