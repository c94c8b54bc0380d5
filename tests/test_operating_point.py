"""Operating points: the rule-out and rule-in thresholds hold their targets by the lower bound and are the extreme
thresholds that do; unreachable targets are refused naming the best reachable value; prevalence arithmetic."""

import numpy as np
import pytest
from scipy.stats import binom

from cxrlab.errors import ConfigError
from cxrlab.evaluation.operating_point import (
    NEGATIVE,
    POSITIVE,
    REFERRED,
    OperatingPoint,
    at_prevalence,
    choose_operating_point,
    estimate_prevalence,
    lower_bound,
    predictive_values,
    refer_band,
    risk_coverage,
    rule_in_threshold,
    rule_out_threshold,
)


def scores(seed=0, negatives=400, positives=1100, separation=2.5):
    rng = np.random.default_rng(seed)
    logits = np.r_[rng.normal(0, 1, negatives), rng.normal(separation, 1, positives)]
    return np.r_[np.zeros(negatives, int), np.ones(positives, int)], 1 / (1 + np.exp(-logits))


def test_lower_bound_is_clopper_pearson():
    for k, n in ((95, 100), (370, 378), (1, 10)):
        bound = lower_bound(k, n, 0.95)
        assert binom.sf(k - 1, n, bound) == pytest.approx(0.05, abs=1e-9)  # P(X >= k | p = bound) = 5%
    assert lower_bound(0, 10, 0.95) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rule_out_is_the_highest_threshold_whose_sensitivity_bound_reaches_the_target(seed):
    targets, probs = scores(seed)
    positives = np.sort(probs[targets == 1])
    t = rule_out_threshold(targets, probs, 0.95, 0.95)
    caught = int((positives >= t).sum())
    assert lower_bound(caught, len(positives), 0.95) >= 0.95
    higher = positives[positives > t][0]  # the next threshold up misses one more positive
    assert lower_bound(int((positives >= higher).sum()), len(positives), 0.95) < 0.95


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rule_in_is_the_lowest_threshold_whose_specificity_bound_reaches_the_target(seed):
    targets, probs = scores(seed)
    negatives = probs[targets == 0]
    t = rule_in_threshold(targets, probs, 0.95, 0.95)
    assert lower_bound(int((negatives < t).sum()), len(negatives), 0.95) >= 0.95
    lower = negatives[negatives < t].max()  # at the highest negative below it, that negative becomes a false positive
    assert lower_bound(int((negatives < lower).sum()), len(negatives), 0.95) < 0.95


def test_answers_refer_inside_the_band_and_single_mode_answers_everything():
    targets, probs = scores(0)
    point = choose_operating_point(targets, probs, 0.5, "0.5", 0.98, 0.98, 0.95, "test evidence")
    assert point.rule_out < point.rule_in
    answers = point.answers(np.array([point.rule_out / 2, point.rule_out, (point.rule_out + point.rule_in) / 2, point.rule_in, 1.0]))
    assert answers.tolist() == [NEGATIVE, REFERRED, REFERRED, POSITIVE, POSITIVE]
    assert set(point.answers(probs, "single")) == {NEGATIVE, POSITIVE}
    assert OperatingPoint.from_dict(point.to_dict()) == point
    # where one threshold meets both targets, the band closes and every image is answered
    low, high = refer_band(targets, probs, 0.6, 0.6, 0.95)
    assert low == high and REFERRED not in choose_operating_point(targets, probs, 0.5, "0.5", 0.6, 0.6, 0.95, "e").answers(probs)


def test_unreachable_targets_are_refused_naming_the_best_reachable_value():
    targets, probs = scores(0, negatives=135, positives=389)
    with pytest.raises(ConfigError, match=r"sensitivity.*1 cannot be shown with 389 positives.*best reachable 95% lower bound is 0\.99"):
        rule_out_threshold(targets, probs, 1.0, 0.95)
    with pytest.raises(ConfigError, match=r"135 negatives.*best reachable 95% lower bound is 0\.978"):
        rule_in_threshold(targets, probs, 0.98, 0.95)
    point = choose_operating_point(targets, probs, 0.5, "youden", 0.98, 0.98, 0.95, "val", keep_going=True)
    assert not point.has_band and "135 negatives" in point.band_error and "no refer band" in point.describe()


def test_prevalence_moves_posteriors_and_predictive_values_and_em_recovers_it():
    rng = np.random.default_rng(0)

    # calibrated posteriors at a 70% evidence prevalence, from two Gaussian classes of logit scores
    def posterior(x, prior):
        likelihood_ratio = np.exp(-((x - 2) ** 2) / 2) / np.exp(-(x**2) / 2)
        return prior * likelihood_ratio / (prior * likelihood_ratio + 1 - prior)

    site = np.r_[rng.normal(0, 1, 3000), rng.normal(2, 1, 1000)]  # a site with 25% positives
    probs = posterior(site, 0.7)
    assert estimate_prevalence(probs, 0.7) == pytest.approx(0.25, abs=0.03)
    assert at_prevalence(probs, 0.25, 0.7) == pytest.approx(posterior(site, 0.25))
    ppv, npv = predictive_values(0.9, 0.8, 0.25)
    assert ppv == pytest.approx(0.9 * 0.25 / (0.9 * 0.25 + 0.2 * 0.75)) and npv == pytest.approx(0.8 * 0.75 / (0.8 * 0.75 + 0.1 * 0.25))
    with pytest.raises(ConfigError, match="prevalence must be .* between 0 and 1, got 1"):
        at_prevalence(probs, 1.0, 0.7)


def test_risk_coverage_starts_at_the_error_of_answering_everything_and_falls():
    targets, probs = scores(0)
    coverage, risk = risk_coverage(targets, probs, 0.5)
    assert coverage[0] == 1 and risk[0] == pytest.approx(((probs >= 0.5) != targets).mean())
    assert risk[np.searchsorted(-coverage, -0.5)] < risk[0] / 2  # referring the least certain half removes most errors


def test_the_bayes_threshold_moves_with_the_prevalence_as_the_posterior_does():
    from cxrlab.evaluation.metrics import apply_temperature
    from cxrlab.evaluation.operating_point import bayes_threshold

    assert bayes_threshold(1.7, 0.74) == 0.5  # at the evidence's own prevalence: calibration alone does not move 0.5
    t = bayes_threshold(1.7, 0.74, 0.3)
    assert t > 0.5 and at_prevalence(apply_temperature(np.array([t]), 1.7), 0.3, 0.74)[0] == pytest.approx(0.5)
    assert bayes_threshold(1.7, 0.74, 0.9) < 0.5


def test_the_single_threshold_rules_chosen_on_the_evidence():
    from cxrlab.config import Config
    from cxrlab.evaluation.scoring import choose_on_evidence

    targets, probs = scores(1)
    cfg = Config(
        dataset="pneumoniamnist",
        threshold="sensitivity-bound",
        target_sensitivity=0.95,
        rule_out_sensitivity=0.97,
        rule_in_specificity=0.97,
    ).validate()
    point, temperature = choose_on_evidence(cfg, targets, probs, "held-out fold + val")
    assert point.threshold == rule_out_threshold(targets, probs, 0.95, 0.95) and point.rule == "sensitivity-bound"
    assert point.rule_out == rule_out_threshold(targets, probs, 0.97) and point.rule_in == rule_in_threshold(targets, probs, 0.97)
    assert point.evidence == "held-out fold + val" and point.negatives == 400 and point.positives == 1100 and temperature > 0


def test_a_finishing_run_with_too_few_positives_for_its_sensitivity_bound_keeps_every_positive_and_says_so():
    from cxrlab.config import Config
    from cxrlab.evaluation.scoring import choose_on_evidence

    targets, probs = scores(2, negatives=40, positives=40)
    cfg = Config(dataset="pneumoniamnist", threshold="sensitivity-bound", target_sensitivity=0.95).validate()
    with pytest.raises(ConfigError, match="40 positives"):
        choose_on_evidence(cfg, targets, probs)
    point, _ = choose_on_evidence(cfg, targets, probs, keep_going=True)
    assert point.threshold == probs[targets == 1].min() and "keeps every positive" in point.threshold_error


def test_band_outcomes_count_what_each_threshold_answers_and_the_confident_errors():
    from cxrlab.evaluation.operating_point import OperatingPoint, band_outcomes

    point = OperatingPoint(0.5, "sensitivity-bound", rule_out=0.3, rule_in=0.7)
    targets = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0])
    probs = np.array([0.9, 0.8, 0.5, 0.1, 0.05, 0.2, 0.4, 0.75, 0.6])
    out = band_outcomes(targets, probs, point)
    assert out["rule_out_sensitivity"] == 3 / 4 and out["confident_misses_per_100_positives"] == 25.0  # 0.1 ruled out
    assert out["rule_out_npv"] == 2 / 3  # ruled out: 0.1 (positive), 0.05, 0.2
    assert out["rule_in_specificity"] == 4 / 5 and out["confident_fp_per_100_normals"] == pytest.approx(20.0)  # 0.75 ruled in
    assert out["rule_in_ppv"] == 2 / 3  # ruled in: 0.9, 0.8 (positives), 0.75
