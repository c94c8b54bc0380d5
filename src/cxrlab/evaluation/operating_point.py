"""Operating points for decision support: a single threshold, or a refer band between a rule-out and a rule-in
threshold, chosen on the run's evidence (its selection split; with a held-out fold of train, that fold and val)
and never on test.

- rule-out threshold: the highest threshold whose sensitivity on the evidence reaches the target by a one-sided
  Clopper-Pearson lower bound; below it the answer is the negative class.
- rule-in threshold: the lowest threshold whose specificity reaches its target by the same bound; at or above it
  the answer is the positive class.
- between them, and for every image the out-of-distribution check flags: **refer** (no class).

Sensitivity and specificity do not depend on the share of positives, so under label shift (a site with another
prevalence, the same images per class) both thresholds keep their meaning; what the prevalence changes is what an
answer is worth (PPV, NPV: ``predictive_values``) and the posterior probability (``at_prevalence``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import lru_cache

import numpy as np

from cxrlab.errors import ConfigError
from cxrlab.evaluation.metrics import logit

REFER = "refer"
POSITIVE, NEGATIVE, REFERRED = 1, 0, -1  # the answers as numbers


def lower_bound(successes: np.ndarray | int, trials: int, level: float) -> np.ndarray | float:
    """One-sided Clopper-Pearson lower confidence bound of a proportion (``level``: e.g. 0.95)."""
    from scipy.stats import beta

    successes = np.asarray(successes, dtype=float)
    bound = np.where(successes > 0, beta.ppf(1 - level, np.maximum(successes, 1), trials - successes + 1), 0.0)
    return float(bound) if bound.ndim == 0 else bound


@lru_cache(maxsize=4096)  # a site's evaluation asks the same counts thousands of times
def _fewest_successes(trials: int, target: float, level: float, metric: str, what: str) -> int:
    """The fewest successes out of ``trials`` whose lower bound reaches ``target``; refused naming the best reachable."""
    if trials == 0:
        raise ConfigError(f"the evidence holds no {what}: a {metric} target cannot be checked")
    bounds = lower_bound(np.arange(trials + 1), trials, level)
    reached = np.flatnonzero(bounds >= target)
    if not len(reached):
        raise ConfigError(
            f"a {metric} target of {target:g} cannot be shown with {trials} {what} in the evidence: the best "
            f"reachable {level:.0%} lower bound is {bounds[-1]:.4f} (all {trials} answered correctly)"
        )
    return int(reached[0])


def rule_out_threshold(targets: np.ndarray, probs: np.ndarray, sensitivity: float, level: float = 0.95) -> float:
    """The highest threshold at which the lower bound of sensitivity (positives with P >= threshold) reaches ``sensitivity``."""
    positives = np.sort(np.asarray(probs, dtype=float)[np.asarray(targets) == 1])
    missed = len(positives) - _fewest_successes(len(positives), sensitivity, level, "sensitivity", "positives")
    return float(positives[missed])  # every positive from the missed-th lowest up is at or above it


def rule_in_threshold(targets: np.ndarray, probs: np.ndarray, specificity: float, level: float = 0.95) -> float:
    """The lowest threshold at which the lower bound of specificity (negatives with P below it) reaches ``specificity``."""
    negatives = np.sort(np.asarray(probs, dtype=float)[np.asarray(targets) == 0])[::-1]
    called = len(negatives) - _fewest_successes(len(negatives), specificity, level, "specificity", "negatives")
    return float(np.nextafter(negatives[called], np.inf))  # just above the highest negative that must stay below


@dataclass
class OperatingPoint:
    """How a run turns P(positive class) into an answer. Saved as operating_point.json in the run."""

    threshold: float  # the single threshold (rule ``rule``): comparisons with published work, ``decision: single``
    rule: str
    rule_out: float | None = None  # P below it: the negative class; None: no refer band
    rule_in: float | None = None  # P at or above it: the positive class
    sensitivity_target: float | None = None
    specificity_target: float | None = None
    level: float | None = None  # of the lower confidence bounds
    evidence: str = "val"  # what the thresholds were chosen on
    negatives: int = 0
    positives: int = 0
    prevalence: float | None = None  # share of positives in the evidence
    band_error: str | None = None  # why the targets gave no band on this evidence (then: the single threshold)
    threshold_error: str | None = None  # why the single threshold's rule could not be met on this evidence, and what was done

    @property
    def has_band(self) -> bool:
        return self.rule_out is not None and self.rule_in is not None

    def answers(self, probs: np.ndarray, decision: str = "refer") -> np.ndarray:
        """POSITIVE, NEGATIVE or REFERRED per probability; ``decision`` 'single' (or a point without a band): the
        single threshold, every image answered."""
        probs = np.asarray(probs, dtype=float)
        if decision == "single" or not self.has_band:
            return np.where(probs >= self.threshold, POSITIVE, NEGATIVE)
        return np.where(probs >= self.rule_in, POSITIVE, np.where(probs < self.rule_out, NEGATIVE, REFERRED))

    def describe(self) -> str:
        if not self.has_band:
            why = (f"; {self.threshold_error}" if self.threshold_error else "") + (
                f"; no refer band: {self.band_error}" if self.band_error else ""
            )
            return f"single threshold {self.threshold:.4g} ({self.rule}, chosen on {self.evidence}){why}"
        return (
            f"rule-out below {self.rule_out:.4g} (sensitivity >= {self.sensitivity_target:g}), rule-in from {self.rule_in:.4g} "
            f"(specificity >= {self.specificity_target:g}), {self.level:.0%} lower bounds on {self.evidence} "
            f"({self.positives} positives, {self.negatives} negatives); refer between"
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> OperatingPoint:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def refer_band(targets: np.ndarray, probs: np.ndarray, sensitivity: float, specificity: float, level: float = 0.95) -> tuple[float, float]:
    """(rule_out, rule_in). Where both targets hold at one threshold (rule-in at or below rule-out), the band closes
    at the midpoint in logit space: every image answered, both targets still met on the evidence."""
    low = rule_out_threshold(targets, probs, sensitivity, level)
    high = rule_in_threshold(targets, probs, specificity, level)
    if high <= low:
        middle = float(_sigmoid((logit(low) + logit(high)) / 2))
        return middle, middle
    return low, high


def choose_operating_point(
    targets: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    rule: str,
    sensitivity: float | None,
    specificity: float | None,
    level: float,
    evidence: str,
    keep_going: bool = False,
) -> OperatingPoint:
    """The single threshold (already chosen by ``rule``) and, with both targets, the refer band. A target the evidence
    cannot show is refused naming the best reachable value; with ``keep_going`` (a finishing run) it is recorded in
    ``band_error`` instead, and the point answers with its single threshold."""
    targets = np.asarray(targets)
    point = OperatingPoint(
        float(threshold),
        rule,
        evidence=evidence,
        negatives=int((targets == 0).sum()),
        positives=int((targets == 1).sum()),
        prevalence=float(targets.mean()),
    )
    if sensitivity is not None and specificity is not None:
        point.sensitivity_target, point.specificity_target, point.level = sensitivity, specificity, level
        try:
            point.rule_out, point.rule_in = refer_band(targets, probs, sensitivity, specificity, level)
        except ConfigError as exc:
            if not keep_going:
                raise
            point.band_error = str(exc)
    return point


def answered_metrics(targets: np.ndarray, probs: np.ndarray, point: OperatingPoint) -> dict[str, float]:
    """What the refer band does on a labelled set: the share referred, and accuracy, sensitivity and specificity among
    the images answered (NaN where none)."""
    targets = np.asarray(targets).astype(int)
    answers = point.answers(probs)
    kept = answers != REFERRED
    right = answers[kept] == targets[kept]
    pos, neg = targets[kept] == 1, targets[kept] == 0
    mean = lambda x: float(x.mean()) if len(x) else float("nan")  # noqa: E731
    return {
        "referred": float(1 - kept.mean()) if len(targets) else float("nan"),
        "answered_accuracy": mean(right),
        "answered_sensitivity": mean(right[pos]),
        "answered_specificity": mean(right[neg]),
        "rule_out": point.rule_out,
        "rule_in": point.rule_in,
    }


BAND_KEYS = (
    "rule_out_sensitivity",
    "rule_out_npv",
    "rule_in_specificity",
    "rule_in_ppv",
    "confident_fp_per_100_normals",
    "confident_misses_per_100_positives",
)


def band_outcomes(targets: np.ndarray, probs: np.ndarray, point: OperatingPoint) -> dict[str, float]:
    """What the refer band's two thresholds do on a labelled set (NaN where undefined): the rule-out threshold's
    sensitivity (positives not ruled out) and NPV (negatives among those ruled out); the rule-in threshold's
    specificity (negatives not ruled in) and PPV (positives among those ruled in); and the confident errors, answered
    outside the band: normals given the positive class per 100 normals, positives ruled out per 100 positives."""
    targets, probs = np.asarray(targets).astype(int), np.asarray(probs, dtype=float)
    pos, neg = targets == 1, targets == 0
    ruled_out, ruled_in = probs < point.rule_out, probs >= point.rule_in
    mean = lambda x: float(x.mean()) if len(x) else float("nan")  # noqa: E731
    return {
        "rule_out_sensitivity": mean(~ruled_out[pos]),
        "rule_out_npv": mean(neg[ruled_out]),
        "rule_in_specificity": mean(~ruled_in[neg]),
        "rule_in_ppv": mean(pos[ruled_in]),
        "confident_fp_per_100_normals": 100 * mean(ruled_in[neg]),
        "confident_misses_per_100_positives": 100 * mean(ruled_out[pos]),
    }


def risk_coverage(targets: np.ndarray, probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Selective classification at ``threshold``: refer the images closest to it (in logit) first. Returns (coverage,
    error among the answered), from everything answered down to one image."""
    targets = np.asarray(targets).astype(int)
    margin = np.abs(logit(np.asarray(probs, dtype=float)) - logit(np.array(threshold)))
    order = np.argsort(-margin, kind="stable")  # most confident first
    wrong = ((np.asarray(probs)[order] >= threshold).astype(int) != targets[order]).astype(float)
    answered = np.arange(1, len(targets) + 1)
    return answered[::-1] / len(targets), (np.cumsum(wrong) / answered)[::-1]


def at_prevalence(probs: np.ndarray, prevalence: float, evidence_prevalence: float) -> np.ndarray:
    """Posterior probabilities moved from the evidence's share of positives to ``prevalence`` (label shift: the
    images of each class look the same at both; Saerens et al. 2002)."""
    check_prevalence(prevalence)
    shift = logit(np.array(prevalence)) - logit(np.array(evidence_prevalence))
    return _sigmoid(logit(np.asarray(probs, dtype=float)) + shift)


def bayes_threshold(temperature: float, evidence_prevalence: float, prevalence: float | None = None) -> float:
    """The raw P(positive) at which the temperature-calibrated probability, moved to ``prevalence`` (default: the
    evidence's), is 0.5: the fewest expected errors there."""
    shift = 0.0 if prevalence is None else float(logit(np.array(prevalence)) - logit(np.array(evidence_prevalence)))
    if prevalence is not None:
        check_prevalence(prevalence)
    return float(_sigmoid(-temperature * shift))


def predictive_values(sensitivity: float, specificity: float, prevalence: float) -> tuple[float, float]:
    """(PPV, NPV) of a test with this sensitivity and specificity at ``prevalence``."""
    check_prevalence(prevalence)
    ppv_den = sensitivity * prevalence + (1 - specificity) * (1 - prevalence)
    npv_den = specificity * (1 - prevalence) + (1 - sensitivity) * prevalence
    return (
        sensitivity * prevalence / ppv_den if ppv_den else float("nan"),
        specificity * (1 - prevalence) / npv_den if npv_den else float("nan"),
    )


def estimate_prevalence(probs: np.ndarray, evidence_prevalence: float, iterations: int = 100, tol: float = 1e-6) -> float:
    """The share of positives among unlabelled images by EM over calibrated posteriors (Saerens et al. 2002)."""
    probs = np.clip(np.asarray(probs, dtype=float), 1e-7, 1 - 1e-7)
    prevalence = evidence_prevalence
    for _ in range(iterations):
        new = float(at_prevalence(probs, prevalence, evidence_prevalence).mean())
        new = min(max(new, 1e-6), 1 - 1e-6)
        if abs(new - prevalence) < tol:
            return new
        prevalence = new
    return prevalence


def check_prevalence(prevalence: float) -> None:
    if not 0 < prevalence < 1:
        raise ConfigError(f"prevalence must be a share of positives strictly between 0 and 1, got {prevalence:g}")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))
