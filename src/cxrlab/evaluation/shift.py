"""Has a site's batch of images changed from the entry's evidence (its held-out fold and val)? Two tests on the
entry's scores, P(positive), the black-box route Rabanser et al. (NeurIPS 2019, "Failing Loudly") found to work best:

- anything changed: the two-sample Kolmogorov-Smirnov test, site scores against evidence scores;
- changed beyond a change of prevalence: the KS distance from the site's scores to the nearest mixture of the
  evidence's class-wise scores (over every share of positives), with a bootstrap p-value that redraws the evidence
  and site batches from that mixture. Under a change of prevalence alone (the images of each class as in the
  evidence) some mixture fits; a nearest mixture needs no calibrated probabilities, which EM would.

Holm's correction over the two. EM's estimate of the share of positives (Saerens et al. 2002) is reported beside
them: it is what PPV and NPV would follow. A test that finds nothing shows only that this batch could not show a
change: below ``MIN_BATCH`` images the verdict says so, and no verdict ever says "no shift".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cxrlab.evaluation.metrics import apply_temperature
from cxrlab.evaluation.operating_point import estimate_prevalence

# Below it the tests' power is too low to rule a shift out: PneumoniaMNIST's test against its evidence, a shift that
# moved specificity from 0.95 to 0.75, was found in 53% of batches of 200 and 83% of 312 (docs/results/pneumoniamnist-28/site.md)
MIN_BATCH = 300
ALPHA = 0.05
BOOTSTRAP = 1000


@dataclass
class ShiftCheck:
    images: int  # site images scored
    evidence_images: int
    evidence_prevalence: float
    site_prevalence: float  # EM's estimate of the site's share of positives
    mixture_share: float  # the share of positives of the evidence mixture nearest the site's scores
    ks_any: float  # KS distance, site scores against evidence scores
    p_any: float
    ks_beyond_prevalence: float  # KS distance to that nearest mixture
    p_beyond_prevalence: float
    p_any_holm: float
    p_beyond_prevalence_holm: float
    alpha: float
    min_batch: int
    verdict: str  # one of VERDICTS' keys
    words: str  # the verdict in plain words

    def to_dict(self) -> dict:
        return asdict(self)


VERDICTS = {
    "beyond-prevalence": "the site's images differ from the evidence beyond a change in the share of {positive}: the "
    "operating point's sensitivity and specificity may not hold here; re-choose it on labelled site images "
    "(cxrlab site calibrate)",
    "prevalence": "the site's scores differ from the evidence's, as a change in the share of {positive} alone would "
    "make them (estimated {site:.1%} here, {evidence:.1%} in the evidence); sensitivity and specificity keep their "
    "meaning, PPV and NPV do not",
    "too-few": "no change shown, but {n} images are too few to rule one out (this check needs at least {min_batch})",
    "none-shown": "no change shown in {n} images at alpha {alpha:g}; this is not proof that there is none",
}


def ecdf_rows(sorted_rows: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Each row's empirical CDF (rows sorted, values in [0, 1]) at each row of ``at``: one searchsorted over rows
    moved apart by their index."""
    rows, width = sorted_rows.shape
    offset = 2.0 * np.arange(rows)[:, None]
    found = np.searchsorted((sorted_rows + offset).ravel(), (at + offset).ravel(), side="right").reshape(at.shape)
    return (found - width * np.arange(rows)[:, None]) / width


def nearest_mixture(site: np.ndarray, negatives: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row (rows sorted): the share s of positives whose mixture s F_pos + (1 - s) F_neg of the evidence's
    class-wise scores lies nearest the site's scores in KS distance, and that distance. The distance is convex in s
    (a maximum of functions convex in s), so a ternary search finds its minimum."""
    at = np.concatenate([site, negatives, positives], axis=1)
    below = ecdf_rows(negatives, at)
    a, b = ecdf_rows(site, at) - below, ecdf_rows(positives, at) - below
    distance = lambda s: np.max(np.abs(a - s[:, None] * b), axis=1)  # noqa: E731
    low, high = np.zeros(len(site)), np.ones(len(site))
    for _ in range(40):
        left, right = low + (high - low) / 3, high - (high - low) / 3
        nearer = distance(left) <= distance(right)
        high, low = np.where(nearer, right, high), np.where(nearer, low, left)
    share = (low + high) / 2
    return share, distance(share)


def check_shift(
    evidence_targets: np.ndarray,
    evidence_probs: np.ndarray,
    site_probs: np.ndarray,
    temperature: float = 1.0,
    positive: str = "the positive class",
    alpha: float = ALPHA,
    bootstrap: int = BOOTSTRAP,
    seed: int = 0,
) -> ShiftCheck:
    """Both tests on one site batch (``site_probs``: P(positive) of each site image the entry judged)."""
    from scipy.stats import ks_2samp

    evidence_targets = np.asarray(evidence_targets)
    negatives = np.sort(np.asarray(evidence_probs, dtype=float)[evidence_targets == 0])
    positives = np.sort(np.asarray(evidence_probs, dtype=float)[evidence_targets == 1])
    site = np.sort(np.asarray(site_probs, dtype=float))
    prior = len(positives) / (len(positives) + len(negatives))
    any_change = ks_2samp(site, np.concatenate([negatives, positives]))
    share = estimate_prevalence(apply_temperature(site, temperature), prior)
    mixed, distance = (float(v[0]) for v in nearest_mixture(site[None], negatives[None], positives[None]))
    rng = np.random.default_rng(seed)  # the null: the evidence redrawn, and site batches drawn from the nearest mixture
    neg = np.sort(rng.choice(negatives, (bootstrap, len(negatives))), axis=1)
    pos = np.sort(rng.choice(positives, (bootstrap, len(positives))), axis=1)
    draw = rng.random((bootstrap, len(site))) < mixed
    batch = np.sort(np.where(draw, rng.choice(positives, draw.shape), rng.choice(negatives, draw.shape)), axis=1)
    null = nearest_mixture(batch, neg, pos)[1]
    p_beyond = float((1 + np.sum(null >= distance)) / (bootstrap + 1))
    p_any, p_beyond_holm = holm([float(any_change.pvalue), p_beyond])
    verdict = (
        "beyond-prevalence"
        if p_beyond_holm < alpha
        else "prevalence"
        if p_any < alpha
        else "too-few"
        if len(site) < MIN_BATCH
        else "none-shown"
    )
    words = VERDICTS[verdict].format(positive=positive, site=share, evidence=prior, n=len(site), min_batch=MIN_BATCH, alpha=alpha)
    return ShiftCheck(
        len(site),
        len(negatives) + len(positives),
        prior,
        share,
        mixed,
        float(any_change.statistic),
        float(any_change.pvalue),
        distance,
        p_beyond,
        p_any,
        p_beyond_holm,
        alpha,
        MIN_BATCH,
        verdict,
        words,
    )


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values, in the order given."""
    order = np.argsort(p_values)
    adjusted, running = np.empty(len(p_values)), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return [float(p) for p in adjusted]
