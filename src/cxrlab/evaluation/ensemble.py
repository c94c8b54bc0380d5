"""Ensembles: a weighted mean of the models' probabilities, weights given or fitted on val."""

from __future__ import annotations

import itertools

import numpy as np
from sklearn.metrics import log_loss

from cxrlab.config import normalised_weights

WEIGHT_STEP = 0.05  # grid step on the simplex when fitting weights: 231 candidates for three models


def check_weights(weights: list[float], models: list[str]) -> np.ndarray:
    """Given weights, one per model, non-negative, normalised to sum 1 (the study's own check, config/study.py)."""
    return np.asarray(normalised_weights(weights, models))


def fit_weights(val_targets: np.ndarray, val_probs: list[np.ndarray], step: float = WEIGHT_STEP) -> np.ndarray:
    """The weights on a grid over the simplex that minimise the ensemble's log loss on val."""
    k = len(val_probs)
    units = round(1 / step)
    best, best_loss = None, np.inf
    for parts in itertools.product(range(units + 1), repeat=k - 1):
        if sum(parts) > units:
            continue
        w = np.array([*parts, units - sum(parts)], dtype=float) / units
        loss = log_loss(val_targets, np.clip(combine(val_probs, w), 1e-7, 1 - 1e-7), labels=[0, 1])
        if loss < best_loss:
            best, best_loss = w, loss
    return best


def combine(probs: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    return np.sum([w * p for w, p in zip(weights, probs)], axis=0)
