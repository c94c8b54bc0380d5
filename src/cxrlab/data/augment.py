"""Batched augmentation on the training device.

The binary subset is a few thousand small uint8 images, so it stays in memory as one tensor and each
batch is augmented at once: one affine/perspective resampling, per-image brightness, contrast and blur
weights, random erasing masks. This replaces per-sample PIL transforms in DataLoader workers, which
dominate the epoch time of the usual way this experiment is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSettings:
    """Which random steps a batch goes through; every step is off unless named. The training recipe's values are
    Config's ``aug_*`` options (``from_config``), the test-time views' are ``evaluation.inference.TTA_SETTINGS``."""

    rotation: float = 0.0
    translate: float = 0.0
    hflip: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    blur_sigma: tuple[float, float] | None = None  # Gaussian blur (kernel 3), sigma drawn from this range; None: off
    erasing: float = 0.0
    perspective: float = 0.0
    corruptions: float = 0.0  # probability of one acquisition-like corruption per image (data/corruptions.py)

    @classmethod
    def from_config(cls, cfg) -> AugmentSettings:
        return cls(
            rotation=cfg.aug_rotation,
            translate=cfg.aug_translate,
            hflip=cfg.aug_hflip,
            brightness=cfg.aug_brightness,
            contrast=cfg.aug_contrast,
            blur_sigma=tuple(cfg.aug_blur_sigma) if cfg.aug_blur else None,
            erasing=cfg.aug_erasing,
            perspective=cfg.aug_perspective,
            corruptions=cfg.aug_corruptions,
        )


def to_float(images_uint8: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 (N, S, S) -> float (N, 1, S, S) in [0, 1] on ``device``."""
    return images_uint8.to(device, non_blocking=True).unsqueeze(1).float().div_(255.0)


def normalize(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return (x - mean) / std


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def _sampling_grid(n: int, size: int, s: AugmentSettings, gen: torch.Generator, device) -> torch.Tensor | None:
    """One sampling grid per image combining flip, rotation, translation and perspective."""
    if not (s.rotation or s.translate or s.hflip or s.perspective):
        return None
    angle = torch.deg2rad(_uniform(n, -s.rotation, s.rotation, gen, device))
    flip = torch.where(torch.rand(n, generator=gen, device=device) < s.hflip, -1.0, 1.0)
    # translate is a fraction of the side; grid coordinates span 2 units per side
    tx, ty = (_uniform(n, -2 * s.translate, 2 * s.translate, gen, device) for _ in range(2))
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, (n, 1, size, size), align_corners=False)
    if s.perspective:
        grid = _perspective(grid, s.perspective, gen, device)
    return grid


def _perspective(grid: torch.Tensor, distortion: float, gen: torch.Generator, device) -> torch.Tensor:
    """Warp grids by a random homography (corners moved by up to ``distortion``/2 of the side), p=0.5 per image."""
    n = grid.shape[0]
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], device=device).expand(n, 4, 2)
    moved = corners + (torch.rand(n, 4, 2, generator=gen, device=device) * 2 - 1) * distortion
    apply = torch.rand(n, generator=gen, device=device) < 0.5
    moved = torch.where(apply[:, None, None], moved, corners)
    # solve for H mapping output corners to moved source corners: 8 unknowns, 8 equations
    x, y = corners[..., 0], corners[..., 1]
    u, v = moved[..., 0], moved[..., 1]
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], -1)
    rows_v = torch.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], -1)
    a = torch.cat([rows_u, rows_v], 1)
    b = torch.cat([u, v], 1)
    h = torch.linalg.solve(a, b)
    h = torch.cat([h, torch.ones(n, 1, device=device)], 1).view(n, 3, 3)
    pts = torch.cat([grid, torch.ones_like(grid[..., :1])], -1)  # (n, S, S, 3)
    mapped = torch.einsum("nij,nhwj->nhwi", h, pts)
    return mapped[..., :2] / mapped[..., 2:].clamp_min(1e-6)


def _blur(x: torch.Tensor, sigma_range: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    sigma = _uniform(n, *sigma_range, gen, x.device)
    taps = torch.exp(-(torch.tensor([-1.0, 0.0, 1.0], device=x.device)[None] ** 2) / (2 * sigma[:, None] ** 2))
    taps = taps / taps.sum(1, keepdim=True)
    kernel = (taps[:, :, None] * taps[:, None, :]).unsqueeze(1)  # (n, 1, 3, 3), one kernel per image
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    return F.conv2d(padded.view(1, n, *padded.shape[2:]), kernel, groups=n).view_as(x)


def _erase(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Random erasing as torchvision does it: area 2-33%, aspect ratio 0.3-3.3, value 0 (after normalisation)."""
    n, _, h, w = x.shape
    device = x.device
    area = _uniform(n, 0.02, 0.33, gen, device) * h * w
    ratio = torch.exp(_uniform(n, math.log(0.3), math.log(3.3), gen, device))
    eh = (area * ratio).sqrt().clamp(1, h)
    ew = (area / ratio).sqrt().clamp(1, w)
    top = torch.rand(n, generator=gen, device=device) * (h - eh)
    left = torch.rand(n, generator=gen, device=device) * (w - ew)
    rows = torch.arange(h, device=device)[None, :, None]
    cols = torch.arange(w, device=device)[None, None, :]
    box = (
        (rows >= top[:, None, None])
        & (rows < (top + eh)[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < (left + ew)[:, None, None])
    )
    apply = torch.rand(n, generator=gen, device=device) < p
    return x.masked_fill((box & apply[:, None, None]).unsqueeze(1), 0.0)


def resample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """x (N, 1, S, S) resampled at ``grid`` (N or 1, S, S, 2: one grid per image, or one for all)."""
    grid = grid.to(x.device).expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def view_grid(size: int, s: AugmentSettings, gen: torch.Generator) -> torch.Tensor | None:
    """One geometric transform drawn from ``s`` as a grid (1, S, S, 2): a test-time view, applied to every image alike,
    so that an image's views never depend on which images share its batch. ``gen`` lives on the CPU."""
    return _sampling_grid(1, size, s, gen, "cpu")


def augment(x: torch.Tensor, s: AugmentSettings, gen: torch.Generator) -> torch.Tensor:
    """Augment a float batch (N, 1, S, S) in [0, 1]; returns values in [0, 1]. ``gen`` lives on x's device."""
    n, _, size, _ = x.shape
    grid = _sampling_grid(n, size, s, gen, x.device)
    if grid is not None:
        x = resample(x, grid)
    if s.brightness:
        x = x * _uniform(n, 1 - s.brightness, 1 + s.brightness, gen, x.device).view(n, 1, 1, 1)
    if s.contrast:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * _uniform(n, 1 - s.contrast, 1 + s.contrast, gen, x.device).view(n, 1, 1, 1) + mean
    if s.brightness or s.contrast:
        x = x.clamp(0, 1)
    if s.blur_sigma:
        x = _blur(x, s.blur_sigma, gen)
    return x


def training_batch(images_uint8: torch.Tensor, s: AugmentSettings, gen: torch.Generator, mean: float, std: float, device) -> torch.Tensor:
    """uint8 images -> augmented, normalised float batch on ``device``; corruptions come first (on the host, as the
    scanner would make them), erasing after normalisation."""
    if s.corruptions:
        images_uint8 = corrupted(images_uint8, s.corruptions, gen)
    x = normalize(augment(to_float(images_uint8, device), s, gen), mean, std)
    if s.erasing:
        x = _erase(x, s.erasing, gen)
    return x


def corrupted(images_uint8: torch.Tensor, share: float, gen: torch.Generator) -> torch.Tensor:
    """Each image, with probability ``share``, under one corruption drawn at random at a random severity."""
    from cxrlab.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt

    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=gen, device=gen.device)))
    host = images_uint8.cpu().numpy().copy()
    names = list(CORRUPTIONS)
    for i in np.flatnonzero(rng.random(len(host)) < share):
        name, severity = names[rng.integers(len(names))], int(rng.choice(SEVERITIES))
        host[i] = corrupt(host[i : i + 1], name, severity, seed=int(rng.integers(2**31)))[0]
    return torch.from_numpy(host).to(images_uint8.device)


def eval_batch(images_uint8: torch.Tensor, mean: float, std: float, device) -> torch.Tensor:
    return normalize(to_float(images_uint8, device), mean, std)
