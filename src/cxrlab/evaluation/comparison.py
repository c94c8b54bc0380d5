"""The statistics a study's claims rest on, over seeds and the shared test images: an interval for a mean over
seeds that covers both the seeds and the resampling of test, and paired differences between entries scored on the
same images (the same bootstrap resamples for both, the seeds drawn again in each), so that "better" is said only
where the interval excludes 0."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrlab.evaluation.metrics import resampled_metrics

Scored = tuple[np.ndarray, np.ndarray, float]  # one seed's (targets, P(positive), threshold) on a split


@dataclass(frozen=True)
class Interval:
    value: float  # mean over seeds
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def text(self, digits: int = 3, signed: bool = False) -> str:
        if np.isnan(self.value):  # undefined on these images (e.g. a PPV where nothing was ruled in)
            return "—"
        sign = "+" if signed else ""
        return f"{self.value:{sign}.{digits}f} [{self.low:{sign}.{digits}f}, {self.high:{sign}.{digits}f}]"


def _samples(runs: list[Scored], idx: np.ndarray) -> dict[str, np.ndarray]:
    """key -> (seeds, B) values for every seed's run on the same resamples ``idx``."""
    per_seed = [resampled_metrics(t, p, threshold, idx) for t, p, threshold in runs]
    return {k: np.stack([s[k] for s in per_seed]) for k in per_seed[0]}


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, (n_boot, n))


def _mean(values: np.ndarray) -> float:
    """The mean of the defined values (NaN, without a warning, where none is: e.g. NPV with no negative answer)."""
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")


def _interval(value: float, samples: np.ndarray, level: float) -> Interval:
    samples = samples[~np.isnan(samples)]
    alpha = (1 - level) / 2
    low, high = np.quantile(samples, [alpha, 1 - alpha]) if len(samples) else (np.nan, np.nan)
    return Interval(value, float(low), float(high))


def seeds_and_resamples(
    runs: list[Scored], keys: tuple[str, ...], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, Interval]:
    """Per key, the mean over seeds with the percentile interval of every seed's value on every test resample
    pooled: what one more run of the recipe, scored on another test set like this one, would give."""
    whole = _samples(runs, np.arange(len(runs[0][0]))[None])
    pooled = _samples(runs, _resamples(len(runs[0][0]), n_boot, seed))
    return {k: _interval(_mean(whole[k]), pooled[k].ravel(), level) for k in keys}


def paired_difference(
    a: list[Scored], b: list[Scored], keys: tuple[str, ...], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, Interval]:
    """Per key, the mean over seeds of key(a) - key(b), both scored on the same images, with its percentile interval
    over a two-stage bootstrap: each resample draws the seeds with replacement (the variation between
    training runs) and the images (shared by a and b), so "ahead" needs an edge that holds across seeds, not one
    seed's luck. Each seed's a is paired with the same seed's b."""
    if len(a) != len(b) or any(len(x[0]) != len(y[0]) or not np.array_equal(x[0], y[0]) for x, y in zip(a, b)):
        raise ValueError("a paired comparison needs both entries scored on the same images for the same seeds")
    whole = np.arange(len(a[0][0]))[None]
    point_a, point_b = _samples(a, whole), _samples(b, whole)
    idx = _resamples(len(a[0][0]), n_boot, seed)
    sample_a, sample_b = _samples(a, idx), _samples(b, idx)
    drawn = np.random.default_rng(seed + 1).integers(0, len(a), (len(a), n_boot))  # seeds, drawn again for every resample
    return {
        k: _interval(
            float(np.mean(point_a[k] - point_b[k])), np.nanmean(np.take_along_axis(sample_a[k] - sample_b[k], drawn, axis=0), axis=0), level
        )
        for k in keys
    }


def per_seed_difference(a: list[Scored], b: list[Scored], key: str) -> list[float]:
    """key(a) - key(b) on all the images, seed by seed: whether an edge holds in every seed."""
    whole = np.arange(len(a[0][0]))[None]
    return [float(d) for d in (_samples(a, whole)[key] - _samples(b, whole)[key])[:, 0]]
