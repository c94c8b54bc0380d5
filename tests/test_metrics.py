import numpy as np
import pytest
from sklearn import metrics as skm

from cxrlab.evaluation.metrics import _count_metrics, bootstrap_ci, evaluate_probs, point_metrics, youden_threshold
from cxrlab.evaluation.scoring import positive_view

#                  tn  tn  fp  fn  tp  tp  tp
TARGETS = np.array([0, 0, 0, 1, 1, 1, 1])
PROBS = np.array([0.1, 0.4, 0.7, 0.3, 0.6, 0.8, 0.9])


def test_point_metrics_against_hand_computed_values():
    m = point_metrics(TARGETS, PROBS, 0.5)
    assert (m["tn"], m["fp"], m["fn"], m["tp"], m["n"]) == (2, 1, 1, 3, 7)
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["npv"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(3 / 4)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    # AUC: of 12 positive/negative pairs, 3 are ranked wrong (0.3 < 0.4, 0.3 < 0.7, 0.6 < 0.7)
    assert m["roc_auc"] == pytest.approx(9 / 12)


def test_threshold_moves_the_operating_point():
    m = point_metrics(TARGETS, PROBS, 0.25)
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (1, 2, 0, 4)
    assert m["threshold"] == 0.25


def test_bootstrap_count_formulas_agree_with_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = rng.random(300)
    point = point_metrics(y, p, 0.5)
    derived = _count_metrics(*(np.array([point[k]]) for k in ("tn", "fp", "fn", "tp")))
    for key, value in derived.items():
        assert value[0] == pytest.approx(point[key]), key


def test_vectorised_bootstrap_auc_and_average_precision_equal_sklearns_per_resample():
    from sklearn import metrics as skm

    from cxrlab.evaluation.metrics import _ranking_metrics

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 120)
    p = np.round(rng.random(120), 1)  # coarse scores: many ties
    idx = rng.integers(0, 120, (300, 120))
    idx[0] = np.flatnonzero(y == 1)[0]  # one resample with a single class
    auc, ap = _ranking_metrics(y, p, idx, chunk=64)
    assert np.isnan(auc[0]) and np.isnan(ap[0])
    for b in range(1, 300):
        assert auc[b] == pytest.approx(skm.roc_auc_score(y[idx[b]], p[idx[b]]), abs=1e-12)
        assert ap[b] == pytest.approx(skm.average_precision_score(y[idx[b]], p[idx[b]]), abs=1e-12)


def test_confidence_intervals_bracket_the_estimate_and_narrow_with_n():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    p = np.clip(y * 0.3 + rng.random(2000) * 0.7, 0, 1)
    wide = bootstrap_ci(y[:100], p[:100], 0.5, n_boot=300)
    narrow = evaluate_probs(y, p, 0.5, n_boot=300)
    assert narrow["accuracy_ci_low"] <= narrow["accuracy"] <= narrow["accuracy_ci_high"]
    assert narrow["roc_auc_ci_low"] <= narrow["roc_auc"] <= narrow["roc_auc_ci_high"]
    assert (narrow["accuracy_ci_high"] - narrow["accuracy_ci_low"]) < (wide["accuracy_ci_high"] - wide["accuracy_ci_low"])


def test_youden_threshold_separates_a_separable_set():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.9])
    t = youden_threshold(y, p)
    assert point_metrics(y, p, t)["accuracy"] == 1.0
    assert 0.2 < t <= 0.3


def test_single_class_sample_gives_nan_auc_not_an_exception():
    m = point_metrics(np.ones(5, int), np.linspace(0.1, 0.9, 5))
    assert np.isnan(m["roc_auc"]) and m["sensitivity"] == pytest.approx(0.6)


def test_positive_class_can_be_the_first_class():
    targets, probs = positive_view(TARGETS, PROBS, ["cardiomegaly", "pneumothorax"], "cardiomegaly")
    assert targets.tolist() == (1 - TARGETS).tolist()
    assert point_metrics(targets, probs)["roc_auc"] == pytest.approx(skm.roc_auc_score(1 - TARGETS, 1 - PROBS))


# ---- thresholds, calibration, ensembles ----

from cxrlab.errors import ConfigError  # noqa: E402
from cxrlab.evaluation.ensemble import check_weights, combine, fit_weights  # noqa: E402
from cxrlab.evaluation.metrics import (  # noqa: E402
    apply_temperature,
    calibration_metrics,
    expected_calibration_error,
    fit_temperature,
    sensitivity_threshold,
)


def test_sensitivity_threshold_is_the_highest_that_reaches_the_target():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, 500)
    probs = np.clip(0.3 * targets + rng.normal(0.35, 0.2, 500), 0, 1)
    for target in (0.8, 0.9, 0.95):
        t = sensitivity_threshold(targets, probs, target)
        assert point_metrics(targets, probs, t)["sensitivity"] >= target
        above = np.min(probs[probs > t])  # the next higher threshold misses the target
        assert point_metrics(targets, probs, above)["sensitivity"] < target


def test_temperature_scaling_recovers_an_overconfident_model():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1.5, 20000)
    targets = (rng.random(20000) < 1 / (1 + np.exp(-logits))).astype(int)  # calibrated at T = 1
    overconfident = 1 / (1 + np.exp(-3 * logits))
    t = fit_temperature(targets, overconfident)
    assert t == pytest.approx(3, rel=0.08)
    m = calibration_metrics(targets, overconfident, t)
    assert m["ece"] > 0.08 and m["ece_calibrated"] < 0.02 and m["brier_calibrated"] < m["brier"]
    # ranking and the 0.5 decision do not move
    calibrated = apply_temperature(overconfident, t)
    assert skm.roc_auc_score(targets, calibrated) == pytest.approx(skm.roc_auc_score(targets, overconfident))
    assert ((calibrated >= 0.5) == (overconfident >= 0.5)).all()


def test_ece_by_hand():
    # bins of width 1/15: 0.1 and 0.9 fall in different bins; observed rates 0 and 1
    assert expected_calibration_error(np.array([0, 1]), np.array([0.1, 0.9])) == pytest.approx(0.1)
    assert expected_calibration_error(np.array([0, 1, 1, 0]), np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.0)


def test_ensemble_weights_fitted_on_val_prefer_the_informative_model():
    rng = np.random.default_rng(2)
    targets = rng.integers(0, 2, 400)
    good = np.clip(0.6 * targets + rng.normal(0.2, 0.15, 400), 0.01, 0.99)
    noise = rng.random(400)
    w = fit_weights(targets, [noise, good])
    assert w.sum() == pytest.approx(1) and w[1] > 0.8
    assert combine([noise, good], np.array([0.0, 1.0])) == pytest.approx(good)


def test_given_ensemble_weights_are_checked_and_normalised():
    assert check_weights([5, 3, 2], ["a", "b", "c"]) == pytest.approx([0.5, 0.3, 0.2])
    with pytest.raises(ConfigError, match="2 ensemble weights given for 3 models"):
        check_weights([0.5, 0.5], ["a", "b", "c"])
    with pytest.raises(ConfigError, match="non-negative"):
        check_weights([1, -1, 1], ["a", "b", "c"])
