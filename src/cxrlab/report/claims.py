"""What a study's report may claim, computed from its entries: the entry the headline names (by a rule fixed before
test is read), intervals over seeds and test resampling, paired differences on the shared test images, the operating
points' evidence, risk against coverage, and the published anchors beside cxrlab's figures at their convention."""

from __future__ import annotations

import numpy as np

from cxrlab.evaluation.comparison import Interval, Scored, paired_difference, per_seed_difference, seeds_and_resamples
from cxrlab.evaluation.metrics import apply_temperature
from cxrlab.evaluation.operating_point import OperatingPoint, answered_metrics, band_outcomes, estimate_prevalence, risk_coverage
from cxrlab.report.study import Entry
from cxrlab.report.tables import mean_sd, values

HEADLINE_RULE = (
    "the entry with the highest mean ROC-AUC over seeds on the evidence its operating point was chosen on "
    "(the held-out fold and val, or val); ties: fewer parameters"
)
HEADLINE_KEYS = (
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("precision", "PPV"),
    ("npv", "NPV"),
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced acc."),
    ("roc_auc", "ROC-AUC"),
)
PAIRED_KEYS = (
    ("roc_auc", "ROC-AUC"),
    ("balanced_accuracy", "balanced acc."),
    ("specificity", "specificity"),
    ("sensitivity", "sensitivity"),
)
COVERAGES = (1.0, 0.95, 0.9, 0.85, 0.8)


def evidence_curve(entry: Entry) -> tuple[np.ndarray, np.ndarray]:
    parts = [entry.curves[s] for s in ("fold", "val") if s in entry.curves]
    return np.concatenate([t for t, _ in parts]), np.concatenate([p for _, p in parts])


def headline(groups: dict[str, list[Entry]]) -> tuple[str, dict[str, float]]:
    """The entry the report names, and every entry's mean evidence ROC-AUC (the rule's numbers)."""
    scores = {name: float(np.mean([e.info["evidence_roc_auc"] for e in g])) for name, g in groups.items()}
    best = max(scores.values())
    tied = [name for name, v in scores.items() if v == best]
    return min(tied, key=lambda name: groups[name][0].info.get("parameters", 0)), scores


def scored_runs(group: list[Entry], split: str = "test") -> list[Scored]:
    return [(e.curves[split][0], e.curves[split][1], e.test["threshold"]) for e in group]


def test_intervals(group: list[Entry], keys: tuple[str, ...], n_boot: int, seed: int) -> dict[str, Interval]:
    return seeds_and_resamples(scored_runs(group), keys, n_boot, seed)


def headline_rows(group: list[Entry], n_boot: int, seed: int) -> list[list[str]]:
    """The named entry on test: each figure's mean over seeds [interval over seeds and test resampling]."""
    intervals = test_intervals(group, tuple(k for k, _ in HEADLINE_KEYS), n_boot, seed)
    rows = [[title, intervals[k].text()] for k, title in HEADLINE_KEYS]
    rows.append(["accuracy at 0.5 (the published convention)", mean_sd(values(group, "accuracy_05", "test"))])
    if "referred" in group[0].test:
        rows.append(["referred (refer band)", mean_sd(100 * values(group, "referred", "test"), 1) + " %"])
        rows.append(["accuracy among the answered", mean_sd(values(group, "answered_accuracy", "test"))])
    return rows


def paired_rows(groups: dict[str, list[Entry]], named: str, n_boot: int, seed: int) -> list[list[str]]:
    """Every other entry against the named one on the same test images: difference [95% interval, seeds and images
    resampled], ** where it excludes 0, †† where even the Bonferroni interval over every difference shown does; and
    in how many seeds the named entry is ahead in ROC-AUC."""
    others = [name for name in groups if name != named]
    keys = tuple(k for k, _ in PAIRED_KEYS)
    strict = bonferroni_level(len(others) * len(keys))
    rows = []
    for name in others:
        a, b = scored_runs(groups[named]), scored_runs(groups[name])
        diffs, sure = paired_difference(a, b, keys, n_boot, seed), paired_difference(a, b, keys, n_boot, seed, level=strict)
        cells = [
            diffs[k].text(signed=True) + (" **" if diffs[k].excludes_zero else "") + (" ††" if sure[k].excludes_zero else "") for k in keys
        ]
        ahead = sum(d > 0 for d in per_seed_difference(a, b, "roc_auc"))
        rows.append([f"{named} − {name}", *cells, f"{ahead} of {len(a)}"])
    return rows


def bonferroni_level(comparisons: int, level: float = 0.95) -> float:
    """The confidence level at which ``comparisons`` intervals together keep the family's error at 1 - ``level``."""
    return 1 - (1 - level) / max(comparisons, 1)


def operating_point_rows(groups: dict[str, list[Entry]]) -> list[list[str]]:
    """Per entry: the thresholds over seeds (min–max) and, where a fold was held out, the point chosen on the fold
    alone against what it gave on val, which it never saw."""
    rows = []
    for name, group in groups.items():
        points = [e.info["point"] for e in group]
        spreads = [
            "—" if points[0].get(k) is None else f"{min(p[k] for p in points):.3f}–{max(p[k] for p in points):.3f}"
            for k in ("threshold", "rule_out", "rule_in")
        ]
        checks = [e.info.get("check") for e in group]
        if None in checks:
            rows.append([name, *spreads, *["—"] * len(CHECKED)])
            continue
        column = lambda key, checks=checks: np.array([np.nan if c[f"val_{key}"] is None else c[f"val_{key}"] for c in checks], dtype=float)  # noqa: E731
        rows.append([name, *spreads, *(mean_sd(100 * column(k), 1) + " %" if k == "referred" else mean_sd(column(k)) for k in CHECKED)])
    return rows


CHECKED = ("sensitivity", "specificity", "referred", "answered_sensitivity", "answered_specificity")
OPERATING_POINT_HEADER = [
    "entry",
    "threshold (seeds)",
    "rule-out (seeds)",
    "rule-in (seeds)",
    "val sensitivity",
    "val specificity",
    "val referred",
    "val answered sensitivity",
    "val answered specificity",
]


BAND_HEADER = [
    "entry",
    "rule-out sensitivity",
    "rule-out NPV",
    "rule-in specificity",
    "rule-in PPV",
    "referred",
    "confident false positives per 100 normals",
    "confident misses per 100 positives",
]


def band_rows(groups: dict[str, list[Entry]], n_boot: int, seed: int) -> list[list[str]]:
    """Per entry with a refer band: what its two thresholds do, on the evidence (mean over seeds) and on test (mean
    [95% interval over seeds and test resampling]), beside the targets they were chosen for."""
    rows = []
    for name, group in groups.items():
        points = [OperatingPoint.from_dict(e.info["point"]) for e in group]
        if not all(p.has_band for p in points):
            rows.append([name, *["no band: " + (next(p.band_error for p in points if not p.has_band) or "none chosen")], *[""] * 6])
            continue
        evidence = [band_outcomes(*evidence_curve(e), p) for e, p in zip(group, points)]
        out = seeds_and_resamples([(*e.curves["test"], p.rule_out) for e, p in zip(group, points)], ("sensitivity", "npv"), n_boot, seed)
        into = seeds_and_resamples(
            [(*e.curves["test"], p.rule_in) for e, p in zip(group, points)], ("specificity", "precision"), n_boot, seed
        )
        on_evidence = EvidenceMeans(evidence)
        target_out, target_in = points[0].sensitivity_target, points[0].specificity_target
        rows.append(
            [
                name,
                f"target ≥ {target_out:g}: {on_evidence('rule_out_sensitivity')} → {out['sensitivity'].text()}",
                f"{on_evidence('rule_out_npv')} → {out['npv'].text()}",
                f"target ≥ {target_in:g}: {on_evidence('rule_in_specificity')} → {into['specificity'].text()}",
                f"{on_evidence('rule_in_ppv')} → {into['precision'].text()}",
                f"{100 * np.mean([answered_metrics(*evidence_curve(e), p)['referred'] for e, p in zip(group, points)]):.1f} % → "
                + mean_sd(100 * values(group, "referred", "test"), 1)
                + " %",
                f"{on_evidence('confident_fp_per_100_normals')} → {per_100(into['specificity'])}",
                f"{on_evidence('confident_misses_per_100_positives')} → {per_100(out['sensitivity'])}",
            ]
        )
    return rows


class EvidenceMeans:
    """Band outcomes on the evidence, each the mean over seeds, as text (counts per 100 with one decimal, shares with three)."""

    def __init__(self, outcomes: list[dict]):
        self.outcomes = outcomes

    def __call__(self, key: str) -> str:
        defined = [v[key] for v in self.outcomes if not np.isnan(v[key])]  # e.g. no PPV where nothing was ruled in
        if not defined:
            return "—"
        value = float(np.mean(defined))
        return f"{value:.1f}" if key.startswith("confident") else f"{value:.3f}"


def per_100(kept: Interval) -> str:
    """Errors per 100 from the share kept: 100 (1 - share), its interval turned round."""
    if np.isnan(kept.value):
        return "—"
    return f"{100 * (1 - kept.value):.1f} [{100 * (1 - kept.high):.1f}, {100 * (1 - kept.low):.1f}]"


def coverage_rows(groups: dict[str, list[Entry]]) -> list[list[str]]:
    """Error among the answered images when the least certain ones (nearest the single threshold) are referred, at
    fixed shares answered, on the evidence and on test (mean over seeds)."""
    rows = []
    for name, group in groups.items():
        for label, curve in (("evidence", evidence_curve), ("test", lambda e: e.curves["test"])):
            risks = []
            for e in group:
                coverage, risk = risk_coverage(*curve(e), e.test["threshold"])
                risks.append([risk[np.searchsorted(-coverage, -c, side="right") - 1] for c in COVERAGES])
            rows.append([name, label, *(f"{100 * np.mean(r):.1f} %" for r in np.array(risks).T)])
    return rows


COVERAGE_HEADER = ["entry", "images", *(f"error at {c:.0%} answered" for c in COVERAGES)]


def anchor_rows(published: tuple, groups: dict[str, list[Entry]]) -> list[list[str]]:
    """Published figures on the split with their convention, then cxrlab's at the same convention (ACC at 0.5)."""
    rows = [[m, f"{auc:.3f}", f"{acc:.3f}", "published; ACC at 0.5"] for m, auc, acc in sorted(published, key=lambda r: -r[1])]
    rows += [
        [
            f"cxrlab {name} (mean of {len(g)} seeds)",
            mean_sd(values(g, "roc_auc", "test")),
            mean_sd(values(g, "accuracy_05", "test")),
            "measured here; ACC at 0.5",
        ]
        for name, g in groups.items()
    ]
    return rows


def prevalence_note(group: list[Entry], positive: str) -> str:
    """Label shift seen without labels: the test share of ``positive`` estimated by EM from the entry's calibrated
    probabilities on the unlabelled test images, beside the true share. It looks at the test images, so it is
    reported apart and chooses nothing."""
    estimates = [
        estimate_prevalence(apply_temperature(e.curves["test"][1], e.test["temperature"]), e.info["point"]["prevalence"]) for e in group
    ]
    truth = float(np.mean(group[0].curves["test"][0]))
    evidence = float(np.mean([e.info["point"]["prevalence"] for e in group]))
    return (
        f"Label shift, estimated without labels (a separate row: it looks at the test images and chooses nothing): the share of "
        f"{positive} on test by EM over {group[0].name}'s calibrated probabilities (Saerens et al. 2002) is "
        f"{mean_sd(np.array(estimates))} over seeds; the labels give {truth:.3f}, the evidence {evidence:.3f}."
    )
