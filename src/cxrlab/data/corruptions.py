"""Acquisition-like corruptions of chest X-rays, at five severities: MedMNIST-C's family for PneumoniaMNIST and
ChestMNIST (Di Salvo, Doerrich & Ledig 2024; severity table from its `medmnistc/corruptions/registry.py`), written
here with PIL, numpy and torchvision, since the medmnistc package pins other versions of medmnist and scikit-image
and needs ImageMagick. MedMNIST-C defines its severities at 224 px; here they apply at the model's size (28 px by
default), where blur and pixelation weigh more: a robustness table here is not MedMNIST-C's benchmark.

Each corruption maps uint8 (S, S) images to uint8 (S, S) images; the random ones draw from the generator given.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance


def _each(images: np.ndarray, one: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(one(Image.fromarray(image))) for image in images])


def pixelate(images: np.ndarray, factor: float, rng=None) -> np.ndarray:
    side = images.shape[-1]
    small = max(1, int(side * factor))
    return _each(images, lambda im: im.resize((small, small), Image.BOX).resize((side, side), Image.BOX))


def jpeg(images: np.ndarray, quality: int, rng=None) -> np.ndarray:
    def one(im: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        im.save(buffer, "JPEG", quality=int(quality))
        return Image.open(buffer).convert("L")

    return _each(images, one)


def _unit(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float64) / 255.0


def _bytes(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def gaussian_noise(images: np.ndarray, scale: float, rng) -> np.ndarray:
    return _bytes(_unit(images) + rng.normal(scale=scale, size=images.shape))


def speckle_noise(images: np.ndarray, scale: float, rng) -> np.ndarray:
    x = _unit(images)
    return _bytes(x + x * rng.normal(scale=scale, size=images.shape))


def impulse_noise(images: np.ndarray, amount: float, rng) -> np.ndarray:
    """Salt and pepper: a share ``amount`` of the pixels set to white or black, half each."""
    x = _unit(images)
    hit, salt = rng.random(images.shape) < amount, rng.random(images.shape) < 0.5
    x[hit & salt], x[hit & ~salt] = 1.0, 0.0
    return _bytes(x)


def shot_noise(images: np.ndarray, photons: float, rng) -> np.ndarray:
    return _bytes(rng.poisson(_unit(images) * photons) / photons)


def gaussian_blur(images: np.ndarray, kernel: int, rng=None) -> np.ndarray:
    import torch
    import torchvision.transforms.functional as TF

    return TF.gaussian_blur(torch.from_numpy(images)[:, None], kernel_size=int(kernel))[:, 0].numpy()


def brightness(images: np.ndarray, factor: float, rng=None) -> np.ndarray:
    return _each(images, lambda im: ImageEnhance.Brightness(im).enhance(factor))


def contrast(images: np.ndarray, factor: float, rng=None) -> np.ndarray:
    return _each(images, lambda im: ImageEnhance.Contrast(im).enhance(factor))


def gamma(images: np.ndarray, power: float, rng=None) -> np.ndarray:
    return _bytes(_unit(images) ** power)


# name: (function, its parameter at severities 1-5): MedMNIST-C's PneumoniaMNIST table (ChestMNIST's differs in
# pixelation and noise; the PneumoniaMNIST one is used for both, being the one measured here)
CORRUPTIONS: dict[str, tuple[Callable, tuple]] = {
    "pixelate": (pixelate, (0.8, 0.7, 0.6, 0.5, 0.4)),
    "jpeg_compression": (jpeg, (50, 30, 15, 10, 7)),
    "gaussian_noise": (gaussian_noise, (0.04, 0.05, 0.06, 0.07, 0.08)),
    "speckle_noise": (speckle_noise, (0.05, 0.07, 0.10, 0.15, 0.20)),
    "impulse_noise": (impulse_noise, (0.005, 0.01, 0.013, 0.017, 0.02)),
    "shot_noise": (shot_noise, (300, 200, 150, 100, 80)),
    "gaussian_blur": (gaussian_blur, (3, 5, 7, 9, 11)),
    "brightness_up": (brightness, (1.1, 1.2, 1.3, 1.4, 1.5)),
    "brightness_down": (brightness, (0.9, 0.8, 0.7, 0.6, 0.5)),
    "contrast_up": (contrast, (1.1, 1.2, 1.3, 1.4, 1.6)),
    "contrast_down": (contrast, (0.9, 0.8, 0.7, 0.6, 0.4)),
    "gamma_up": (gamma, (1.1, 1.2, 1.3, 1.4, 1.6)),
    "gamma_down": (gamma, (0.9, 0.8, 0.7, 0.6, 0.4)),
}
SEVERITIES = (1, 2, 3, 4, 5)


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """``images`` (uint8 (N, S, S)) under one corruption at one severity (1-5); noise drawn from ``seed``."""
    function, parameters = CORRUPTIONS[name]
    return function(images, parameters[severity - 1], np.random.default_rng(seed))
