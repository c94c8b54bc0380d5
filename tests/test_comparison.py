"""Claims over seeds and shared test images: paired differences say "better" only where the data say so, and the
interval beside a mean over seeds covers the spread of the seeds as well as the resampling of test."""

import numpy as np
import pytest

from cxrlab.evaluation.comparison import paired_difference, per_seed_difference, seeds_and_resamples
from cxrlab.evaluation.metrics import bootstrap_ci


def scored(noise, seeds=(0, 1, 2), n=600, shift=0.0):
    """Per seed (targets, probabilities, threshold 0.5) of one model on the same test images."""
    targets = np.random.default_rng(99).integers(0, 2, n)
    runs = []
    for s in seeds:
        logits = 2.5 * (targets - 0.5) + np.random.default_rng(1000 + s + int(100 * noise)).normal(shift, noise, n)
        runs.append((targets, 1 / (1 + np.exp(-logits)), 0.5))
    return runs


def test_a_clearly_better_model_is_separated_and_a_model_from_the_same_recipe_is_not():
    better, worse = scored(0.8), scored(2.0)
    gap = paired_difference(better, worse, ("roc_auc",), 500)["roc_auc"]
    assert gap.value > 0 and gap.excludes_zero
    same = paired_difference(scored(1.0, seeds=(0, 1, 2)), scored(1.0, seeds=(3, 4, 5)), ("roc_auc",), 500)["roc_auc"]
    assert not same.excludes_zero and abs(same.value) < 0.01
    itself = paired_difference(better, better, ("accuracy",), 200)["accuracy"]
    assert (itself.value, itself.low, itself.high) == (0, 0, 0)
    with pytest.raises(ValueError, match="same images"):
        paired_difference(better, scored(0.8, n=500), ("roc_auc",))


def test_an_edge_that_changes_sign_between_seeds_is_not_called_ahead():
    """Seed by seed, a beats b twice by a lot and loses once by a lot: on the images alone the mean edge would look
    sure; with the seeds drawn again in every resample it is not."""
    noises = ((0.8, 1.2), (1.4, 1.0), (0.8, 1.2))  # (a's, b's) per seed
    a = [scored(mine, seeds=(s,))[0] for s, (mine, _) in enumerate(noises)]
    b = [scored(theirs, seeds=(s + 10,))[0] for s, (_, theirs) in enumerate(noises)]
    signs = np.sign(per_seed_difference(a, b, "roc_auc"))
    assert list(signs) == [1, -1, 1]
    gap = paired_difference(a, b, ("roc_auc",), 500)["roc_auc"]
    assert gap.value > 0 and not gap.excludes_zero


def test_the_interval_of_a_mean_over_seeds_covers_the_seeds_spread():
    runs = [scored(1.0, seeds=(s,), shift=shift)[0] for s, shift in ((0, -0.6), (1, 0.0), (2, 0.6))]  # seeds whose threshold sits apart
    pooled = seeds_and_resamples(runs, ("specificity",), 500)["specificity"]
    first = bootstrap_ci(*runs[0], 500)
    seeds = [((p < 0.5) & (t == 0)).sum() / (t == 0).sum() for t, p, _ in runs]
    assert pooled.low <= min(seeds) and pooled.high >= max(seeds) and pooled.low < pooled.value < pooled.high
    assert pooled.high - pooled.low > first["specificity_ci_high"] - first["specificity_ci_low"]
    assert pooled.value == pytest.approx(np.mean(seeds))
