"""Evidence for cxrlab's operating-point defaults (issue 24), never looking at test.

A study trained with ``compare --holdout K`` holds out fold (seed mod K) of train in every run. Each candidate rule
(single-threshold rules; refer-band targets) is chosen on that fold alone, as the run would choose it, and judged on
the official val split, which the run never saw (its best epoch was chosen on the fold). The TTA views and the
ensemble are scored the same way. Test is neither loaded nor predicted: the data are read with splits train and val.

    PYTHONPATH=src .venv/bin/python benchmarks/operating_point_evidence.py ~/cxrlab-study/pneumoniamnist-28-holdout5 > evidence.md
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from cxrlab.core.runs import RunDir
from cxrlab.data.task import fold_view, task_data
from cxrlab.evaluation.inference import load_trained, predict_probs, predict_probs_tta
from cxrlab.evaluation.metrics import fit_temperature, point_metrics, roc_auc
from cxrlab.evaluation.operating_point import answered_metrics, choose_operating_point
from cxrlab.evaluation.scoring import choose_threshold, positive_view

SINGLE_RULES = {
    "youden": {},
    "0.5": {},
    "sensitivity 0.95": {"target_sensitivity": 0.95},
    "sensitivity 0.96": {"target_sensitivity": 0.96},
    "sensitivity-bound 0.95": {"target_sensitivity": 0.95},
}
BANDS = ((0.95, 0.95), (0.97, 0.95), (0.97, 0.97), (0.98, 0.95), (0.98, 0.98), (0.99, 0.95), (0.99, 0.98))
TTA = 4


def curves(study: Path):
    """(entry, seed) -> {'fold': (targets, P), 'val': (targets, P)} for every run, its TTA and the per-seed ensemble."""
    out = {}
    data = None
    for run_path in sorted((study / "runs").iterdir()):
        trained = load_trained(run_path, "cpu")
        cfg = trained.cfg
        if data is None:
            data = task_data(cfg, splits=("train", "val"))  # never test
        fold = fold_view(data, cfg.cv_folds, cfg.cv_fold).splits["val"]
        name, seed = cfg.model, cfg.seed
        for split, part in (("fold", fold), ("val", data.splits["val"])):
            targets = part.targets.numpy()
            plain = predict_probs(trained.model, part.images, cfg, trained.device)
            tta = predict_probs_tta(trained.model, part.images, cfg, trained.device, TTA, seed=seed, plain=plain)
            out.setdefault((name, seed), {})[split] = positive_view(targets, plain[:, 0], data.classes, cfg.positive)
            out.setdefault((f"{name} + TTA×{TTA}", seed), {})[split] = positive_view(targets, tta[:, 0], data.classes, cfg.positive)
        print(f"scored {run_path.name}", file=sys.stderr)
    for seed in sorted({s for _, s in out}):
        members = [v for (n, s), v in out.items() if s == seed and "TTA" not in n]
        out[("ensemble", seed)] = {
            split: (members[0][split][0], np.mean([m[split][1] for m in members], axis=0)) for split in ("fold", "val")
        }
    return out, RunDir(next((study / "runs").iterdir())).load_config()


def table(header, rows):
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows])


def ms(values):
    v = np.asarray(values, dtype=float)
    return f"{np.nanmean(v):.3f} ± {np.nanstd(v, ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a compare --holdout study folder")
    args = parser.parse_args()
    scored, cfg = curves(args.study)
    entries = sorted({n for n, _ in scored}, key=lambda n: ("ensemble" in n, "TTA" in n, n))
    print("## Single threshold: chosen on the held-out fold, realised on val (mean ± sd over seeds)\n")
    rows = []
    for rule, extra in SINGLE_RULES.items():
        for name in entries:
            got = []
            for (n, _), c in scored.items():
                if n != name:
                    continue
                rule_cfg = replace(cfg, threshold=rule.split()[0], **extra)
                t_fold, p_fold = c["fold"]
                threshold = choose_threshold(rule_cfg, t_fold, p_fold, fit_temperature(t_fold, p_fold))
                got.append((threshold, point_metrics(*c["val"], threshold)))
            rows.append(
                [
                    rule,
                    name,
                    f"{min(t for t, _ in got):.3f}–{max(t for t, _ in got):.3f}",
                    *(ms([m[k] for _, m in got]) for k in ("sensitivity", "specificity", "balanced_accuracy", "accuracy")),
                ]
            )
    print(table(["rule", "entry", "threshold (seeds)", "val sensitivity", "val specificity", "val balanced acc", "val accuracy"], rows))
    print("\n## Refer band: targets chosen on the held-out fold (95% lower bounds), realised on val\n")
    rows = []
    for sens, spec in BANDS:
        for name in entries:
            got = []
            for (n, _), c in scored.items():
                if n != name:
                    continue
                point = choose_operating_point(*c["fold"], 0.5, "0.5", sens, spec, 0.95, "fold", keep_going=True)
                got.append(answered_metrics(*c["val"], point) if point.has_band else None)
            if None in got:
                rows.append([f"{sens:g} / {spec:g}", name, "unreachable on the fold", "", "", ""])
                continue
            rows.append(
                [
                    f"{sens:g} / {spec:g}",
                    name,
                    ms([100 * g["referred"] for g in got]) + " %",
                    *(ms([g[k] for g in got]) for k in ("answered_accuracy", "answered_sensitivity", "answered_specificity")),
                ]
            )
    print(table(["targets sens / spec", "entry", "val referred", "val answered acc", "val answered sens", "val answered spec"], rows))
    print("\n## The thresholds' spread over 200 bootstrap resamples of the fold (seed 0; 5th–95th percentile)\n")
    rows = []
    rng = np.random.default_rng(0)
    for name in entries:
        targets, probs = scored[(name, 0)]["fold"]
        draws = {"youden": [], "sensitivity 0.95": [], "sensitivity-bound 0.95": [], "rule-out 0.98": [], "rule-in 0.98": []}
        for _ in range(200):
            pick = rng.integers(0, len(targets), len(targets))
            t, p = targets[pick], probs[pick]
            draws["youden"].append(choose_threshold(replace(cfg, threshold="youden"), t, p))
            draws["sensitivity 0.95"].append(choose_threshold(replace(cfg, threshold="sensitivity", target_sensitivity=0.95), t, p))
            draws["sensitivity-bound 0.95"].append(
                choose_threshold(replace(cfg, threshold="sensitivity-bound", target_sensitivity=0.95), t, p)
            )
            point = choose_operating_point(t, p, 0.5, "0.5", 0.98, 0.98, 0.95, "resample", keep_going=True)
            draws["rule-out 0.98"].append(point.rule_out if point.has_band else np.nan)
            draws["rule-in 0.98"].append(point.rule_in if point.has_band else np.nan)
        rows.append([name, *(f"{np.nanpercentile(v, 5):.3f}–{np.nanpercentile(v, 95):.3f}" for v in draws.values())])
    print(table(["entry", *draws], rows))
    print("\n## Ranking evidence: ROC-AUC on the fold and on val (mean over seeds)\n")
    print(
        table(
            ["entry", "fold ROC-AUC", "val ROC-AUC"],
            [
                [
                    name,
                    ms([roc_auc(*c["fold"]) for (n, _), c in scored.items() if n == name]),
                    ms([roc_auc(*c["val"]) for (n, _), c in scored.items() if n == name]),
                ]
                for name in entries
            ],
        )
    )


if __name__ == "__main__":
    main()
