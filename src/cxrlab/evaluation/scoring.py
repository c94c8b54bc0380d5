"""The binary task's class arithmetic, written once: the model's output is P(class 1); which class is positive,
its probability, the other class, and the decision threshold chosen on val."""

from __future__ import annotations

import numpy as np

from cxrlab.config import Config
from cxrlab.evaluation.metrics import sensitivity_threshold, youden_threshold


def positive_view(targets: np.ndarray, probs_class1: np.ndarray, classes: list[str], positive: str) -> tuple[np.ndarray, np.ndarray]:
    """Targets and probabilities of the positive class."""
    if positive == classes[1]:
        return targets, probs_class1
    return 1 - targets, 1 - probs_class1


def positive_probability(probs_class1: np.ndarray, classes: list[str], positive: str) -> np.ndarray:
    return probs_class1 if positive == classes[1] else 1 - probs_class1


def negative_class(classes: list[str], positive: str) -> str:
    return next(c for c in classes if c != positive)


def predicted_class(p_positive: float, threshold: float, classes: list[str], positive: str) -> str:
    return positive if p_positive >= threshold else negative_class(classes, positive)


def choose_threshold(cfg: Config, val_targets: np.ndarray, val_probs: np.ndarray) -> float:
    """The decision threshold by cfg's rule, from val only."""
    if cfg.threshold_rule == "youden":
        return youden_threshold(val_targets, val_probs)
    if cfg.threshold_rule == "sensitivity":
        return sensitivity_threshold(val_targets, val_probs, cfg.target_sensitivity)
    return 0.5
