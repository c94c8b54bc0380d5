"""SegmentationPreprocessor: keep the bright body region, zero the background, before the CNN sees it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationPreprocessor(nn.Module):
    """Per image: min-max normalise, threshold into a mask, dilate the mask with a 3x3 max-pool, multiply.

    It has no weights; the mask is not differentiable and needs none.
    """

    def __init__(self, threshold: float = 0.2):
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        high = x.amax(dim=(1, 2, 3), keepdim=True)
        scaled = (x - low) / (high - low).clamp_min(1e-6)
        mask = (scaled > self.threshold).to(x.dtype)
        mask = F.max_pool2d(mask, kernel_size=3, stride=1, padding=1)
        return x * mask

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"
