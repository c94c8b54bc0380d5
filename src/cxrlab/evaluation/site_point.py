"""An operating point re-chosen on a site's own labelled images, with a stated guarantee.

The single and rule-out thresholds are order statistics of the site's positive scores: the (k+1)-th lowest, k the
most misses the target allows, so that the sensitivity on the site's next patients reaches the target with
probability ``level`` (the Neyman-Pearson umbrella, Tong, Feng & Li, Sci. Adv. 2018; the same thresholds as a
one-sided Clopper-Pearson lower bound at the order statistic, which operating_point.py's rules compute). The
rule-in threshold is the mirror image on the site's negatives. It needs at least ``needed(target, level)`` images
of the class (59 positives for 0.95 at 95%, 149 for 0.98); fewer are refused, saying how many more labelled images
that takes at the site's prevalence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cxrlab.errors import ConfigError
from cxrlab.evaluation.operating_point import OperatingPoint, lower_bound, refer_band, rule_out_threshold

RULE = "site order statistic"


def needed(target: float, level: float) -> int:
    """The fewest images of a class for a ``target`` share to be shown at ``level``: all of them on the right side."""
    return math.ceil(math.log(1 - level) / math.log(target))


def shortfall(metric: str, what: str, have: int, target: float, level: float, share: float, total: int) -> str:
    """Why a target cannot be shown with ``have`` images of the class, and how many more labelled images it takes at
    the site's ``share`` of that class."""
    need = needed(target, level)
    more = math.ceil(need / share) - total
    return (
        f"{metric} {target:g} with {level:.0%} confidence needs at least {need} {what} images, all on the right side of the "
        f"threshold; the set holds {have}: about {more} more labelled images at this site's share of {what}s ({share:.0%})"
    )


@dataclass
class SiteCalibration:
    point: OperatingPoint
    target: float  # the single threshold's sensitivity target
    positives: int
    negatives: int
    sensitivity: float  # on the site's labelled images, at the single threshold
    sensitivity_lower: float  # one-sided Clopper-Pearson at ``level``
    specificity: float
    specificity_lower: float

    def lines(self) -> list[str]:
        p = self.point
        lines = [
            f"single threshold {p.threshold:.4g}: sensitivity >= {self.target:g} on the site's next patients with "
            f"{p.level:.0%} confidence ({RULE}, {self.positives} positives)",
            f"on these {self.positives + self.negatives} images: sensitivity {self.sensitivity:.3f} (lower bound "
            f"{self.sensitivity_lower:.3f}), specificity {self.specificity:.3f} (lower bound {self.specificity_lower:.3f})",
        ]
        lines.append(
            f"refer band: rule-out below {p.rule_out:.4g}, rule-in from {p.rule_in:.4g}" if p.has_band else f"no refer band: {p.band_error}"
        )
        return lines


def calibrate(
    targets: np.ndarray,
    probs: np.ndarray,
    sensitivity: float,
    rule_out_sensitivity: float | None,
    rule_in_specificity: float | None,
    level: float,
    evidence: str,
) -> SiteCalibration:
    """The site's point: the single threshold (refused with too few positives) and, where the site holds enough of
    each class, the refer band (otherwise none, saying how many more images it needs)."""
    targets, probs = np.asarray(targets), np.asarray(probs, dtype=float)
    positives, negatives = int(targets.sum()), int(len(targets) - targets.sum())
    if not positives or not negatives:
        raise ConfigError(
            f"a site's operating point needs labelled images of both classes; found {positives} positives, {negatives} negatives"
        )
    share = positives / len(targets)
    if positives < needed(sensitivity, level):
        short = shortfall("sensitivity", "positive", positives, sensitivity, level, share, len(targets))
        raise ConfigError(f"too few positives for the site's single threshold: {short}")
    threshold = rule_out_threshold(targets, probs, sensitivity, level)
    band_error, rule_out, rule_in = None, None, None
    if rule_out_sensitivity and rule_in_specificity:
        short = [
            shortfall(metric, what, have, target, level, part, len(targets))
            for metric, what, have, target, part in (
                ("sensitivity", "positive", positives, rule_out_sensitivity, share),
                ("specificity", "negative", negatives, rule_in_specificity, 1 - share),
            )
            if have < needed(target, level)
        ]
        if short:
            band_error = "; ".join(short) + "; every image is answered at the single threshold"
        else:
            rule_out, rule_in = refer_band(targets, probs, rule_out_sensitivity, rule_in_specificity, level)
    band = rule_out is not None
    point = OperatingPoint(
        threshold, RULE, rule_out, rule_in, rule_out_sensitivity if band else sensitivity, rule_in_specificity if band else None
    )
    point.level, point.evidence, point.negatives, point.positives, point.prevalence, point.band_error = (
        level,
        evidence,
        negatives,
        positives,
        share,
        band_error,
    )
    found = probs >= threshold
    tp, tn = int((found & (targets == 1)).sum()), int((~found & (targets == 0)).sum())
    return SiteCalibration(
        point,
        sensitivity,
        positives,
        negatives,
        tp / positives,
        lower_bound(tp, positives, level),
        tn / negatives,
        lower_bound(tn, negatives, level),
    )


class SiteModel:
    """An entry (a run's TrainedModel or a study's EntryModel) answering by a site's operating point: everything else,
    its probabilities and checks included, is the entry's own."""

    def __init__(self, source, point: OperatingPoint, site_line: str):
        self.source, self.point, self.site_line = source, point, site_line

    def __getattr__(self, name: str):
        if name == "source":  # not set yet (copying): no recursion
            raise AttributeError(name)
        return getattr(self.source, name)

    @property
    def threshold(self) -> float:
        return self.point.threshold

    @property
    def answered_by(self) -> str:
        return f"{self.source.answered_by}; {self.site_line}"


class AdaptedModel:
    """A run's TrainedModel whose network was adapted to a site (training/site_adapt.py): probabilities from the
    adapted network; the out-of-distribution check as the run fitted it, on its own network, since it asks whether an
    image is like the training images, which adapting does not change. Grad-CAM stays the run's own network's."""

    def __init__(self, source, model):
        self.source, self.model = source, model

    def __getattr__(self, name: str):
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)

    def probs(self, images):
        from cxrlab.evaluation.inference import predict_probs

        return predict_probs(self.model, images, self.cfg, self.device)

    def predict(self, images):
        return self.probs(images), self.source.ood_scores(images)
