"""The binary task's class arithmetic, written once: the model's output is P(class 1); which class is positive,
its probability, the other class, and the scoring protocol: operating point and temperature chosen on the evidence."""

from __future__ import annotations

import numpy as np

from cxrlab.config import Config
from cxrlab.errors import ConfigError
from cxrlab.evaluation.metrics import evaluate_probs, fit_temperature, point_metrics, sensitivity_threshold, youden_threshold
from cxrlab.evaluation.operating_point import (
    OperatingPoint,
    answered_metrics,
    band_outcomes,
    bayes_threshold,
    choose_operating_point,
    predictive_values,
    rule_out_threshold,
)

AT_05_KEYS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity")  # also reported at 0.5, the published convention


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


def choose_threshold(cfg: Config, val_targets: np.ndarray, val_probs: np.ndarray, temperature: float = 1.0) -> float:
    """The decision threshold by cfg's rule, from the evidence only (``temperature``: fitted on it, for 'bayes')."""
    if cfg.threshold_rule == "youden":
        return youden_threshold(val_targets, val_probs)
    if cfg.threshold_rule == "sensitivity":
        return sensitivity_threshold(val_targets, val_probs, cfg.target_sensitivity)
    if cfg.threshold_rule == "sensitivity-bound":
        return rule_out_threshold(val_targets, val_probs, cfg.target_sensitivity, cfg.bound_level)
    if cfg.threshold_rule == "bayes":
        return bayes_threshold(temperature, float(np.mean(val_targets)), cfg.prevalence)
    return 0.5


def choose_on_evidence(
    cfg: Config, targets: np.ndarray, probs: np.ndarray, evidence: str = "val", keep_going: bool = False
) -> tuple[OperatingPoint, float]:
    """The scoring protocol, written once: the operating point (single threshold by cfg's rule, refer band by its
    targets) and the temperature, both chosen on the evidence only (val, or a held-out fold of train with val) and
    applied unchanged to every other split."""
    temperature = fit_temperature(targets, probs)
    try:
        threshold, why = choose_threshold(cfg, targets, probs, temperature), None
    except ConfigError as exc:  # 'sensitivity-bound' with too few positives to show the target
        if not keep_going:
            raise
        threshold = float(np.min(np.asarray(probs)[np.asarray(targets) == 1]))
        why = f"{exc}; the threshold keeps every positive of the evidence instead"
    point = choose_operating_point(
        targets,
        probs,
        threshold,
        cfg.threshold_rule,
        cfg.rule_out_sensitivity,
        cfg.rule_in_specificity,
        cfg.bound_level,
        evidence,
        keep_going,
    )
    point.threshold_error = why
    return point, temperature


def score_probs(
    targets: np.ndarray,
    probs: np.ndarray,
    point: OperatingPoint,
    temperature: float,
    n_boot: int,
    seed: int,
    prevalence: float | None = None,
) -> dict:
    """Every metric of one split (the layout of metrics.json): at the single threshold with bootstrap CIs and
    calibration; at 0.5 (``<metric>_05``); the refer band's share referred and accuracy among the answered; and, at
    a deployment ``prevalence``, the PPV and NPV the single threshold's sensitivity and specificity give there."""
    out = evaluate_probs(targets, probs, point.threshold, n_boot, seed, temperature)
    at_05 = point_metrics(targets, probs, 0.5)
    out.update({f"{k}_05": at_05[k] for k in AT_05_KEYS})
    if point.has_band:
        out.update(answered_metrics(targets, probs, point))
        out.update(band_outcomes(targets, probs, point))
    if prevalence is not None:
        out["prevalence"] = prevalence
        out["ppv_at_prevalence"], out["npv_at_prevalence"] = predictive_values(out["sensitivity"], out["specificity"], prevalence)
    return out
