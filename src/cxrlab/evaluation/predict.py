"""Predictions for image files with a trained run: class and probability per file, errors per file."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cxrlab.data.images import load_image
from cxrlab.errors import ImageFileError
from cxrlab.evaluation.evaluate import positive_view
from cxrlab.evaluation.inference import TrainedModel


@dataclass
class Prediction:
    path: str
    label: str | None = None  # predicted class
    probability: float | None = None  # P(positive class)
    error: str | None = None


def predict_files(trained: TrainedModel, paths: list[str]) -> list[Prediction]:
    """One Prediction per path, in order; unreadable files get an error and do not stop the others."""
    results = [Prediction(str(p)) for p in paths]
    images, ok = [], []
    for i, path in enumerate(paths):
        try:
            images.append(load_image(path, trained.cfg.size))
            ok.append(i)
        except ImageFileError as exc:
            results[i].error = str(exc)
    if images:
        cfg = trained.cfg
        probs1 = trained.probs(torch.from_numpy(np.stack(images)))
        _, probs = positive_view(np.zeros(len(probs1), dtype=int), probs1, trained.classes, cfg.positive)
        negative = next(c for c in trained.classes if c != cfg.positive)
        for i, p in zip(ok, probs):
            results[i].probability = float(p)
            results[i].label = cfg.positive if p >= trained.threshold else negative
    return results
