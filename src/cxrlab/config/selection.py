"""The selection rule: which val score is better, for the metric that picks the best epoch (``select_metric``)."""

from __future__ import annotations

import math

HIGHER_IS_BETTER = {"roc_auc": True, "accuracy": True, "balanced_accuracy": True, "loss": False}


def score_of(row: dict, metric: str) -> float:
    return row[f"val_{metric}"]


def improved(score: float, best: float | None, metric: str) -> bool:
    if math.isnan(score):
        return False
    if best is None:
        return True
    return score > best if HIGHER_IS_BETTER[metric] else score < best
