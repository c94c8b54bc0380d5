"""The main experiment: train the models for several seeds under one protocol (train on train, choose on val,
report on test) and write one report from the runs. Every number in the report is one a run or this module
measured; nothing is typed in.

    OUT/compare.yaml          the study's options and training options: `cxrlab compare --config` reproduces it
                              (a `recipes:` entry gives one model training options of its own, e.g. MedMNIST v2's
                              for the reference resnet18)
    OUT/runs/<model>-seed<k>/ one run directory per model and seed (reused when the config matches)
    OUT/comparison.csv        one line per entry (model, model + TTA, ensemble) and seed, with its run directories
    OUT/report.md, .html      the report; figures in OUT/figures/ (embedded in the HTML)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from cxrlab.config import POINT_OPTIONS, Config, Study
from cxrlab.console import logger
from cxrlab.data.task import TaskData, data_label, fold_view, task_data
from cxrlab.evaluation.ensemble import check_weights, combine, fit_weights
from cxrlab.evaluation.inference import load_trained, predict_probs, predict_probs_tta
from cxrlab.evaluation.scoring import positive_view
from cxrlab.export.bench import deployed_speed
from cxrlab.report.compare_multilabel import compare_multilabel
from cxrlab.report.compare_report import write_report
from cxrlab.report.study import Entry, save_study, score, train_accuracy_at_best, train_runs, within
from cxrlab.report.tables import (
    comparison_rows,
    grouped,
    write_csv,
)
from cxrlab.training.shared import Shared

log = logger(__name__)


def model_entries(runs: dict, data: TaskData, study: Study, base: Config) -> list[Entry]:
    """Every run scored by the study's rules (operating point, bootstrap), whatever its own were: the same rules for
    all rows. A run that held out a fold of train is also scored on it: with val, the evidence its point is chosen on."""
    entries, speed, folds = [], {}, {}
    for (name, seed), run in runs.items():
        trained = load_trained(run.path)
        summary = run.read_json(run.summary)
        cfg = replace(trained.cfg, **{k: getattr(base, k) for k in POINT_OPTIONS}, n_bootstrap=base.n_bootstrap)
        splits = {"val": data.splits["val"], "test": data.splits["test"]}
        if cfg.cv_folds:
            key = (cfg.cv_folds, cfg.cv_fold)
            folds[key] = folds.get(key) or fold_view(data, *key).splits["val"]
            splits["fold"] = folds[key]
        curves, tta_curves = {}, {}
        for split, part in splits.items():
            targets = part.targets.numpy()
            plain = predict_probs(trained.model, part.images, cfg, trained.device)
            curves[split] = positive_view(targets, plain[:, 0], data.classes, cfg.positive)
            if study.tta > 1:
                probs = predict_probs_tta(trained.model, part.images, cfg, trained.device, study.tta, seed=seed, plain=plain)
                tta_curves[split] = positive_view(targets, probs[:, 0], data.classes, cfg.positive)
        if name not in speed:  # per architecture, once: the first seed's run
            log.info(f"timing inference (onnxruntime): {name}")
            speed[name] = deployed_speed(trained, data.splits["test"].images)
        info = {
            "parameters": summary["parameters"],
            "model_size_mb": summary["model_size_mb"],
            "train_accuracy": train_accuracy_at_best(run, summary["best_epoch"]),
            "best_epoch": summary["best_epoch"],
            "seconds_per_epoch": summary["seconds_per_epoch"],
            "train_seconds": summary["train_seconds"],
            "device": summary["device"],
            "side_by_side": summary.get("side_by_side"),  # not recorded by runs older than this field
            "threads": summary.get("threads"),
            **speed[name],
            "runs": [within(run.path, study.out)],
            "ood_flagged": (summary.get("ood") or {}).get("flagged"),  # None: a run fitted before the check (cxrlab ood RUN)
        }
        val, test, extra = score(cfg, curves)
        entries.append(Entry(name, "model", seed, val, test, curves, {**info, **extra}))
        if tta_curves:
            tta_val, tta_test, tta_extra = score(cfg, tta_curves)
            tta_info = {
                k: info[k]
                for k in (
                    "parameters",
                    "model_size_mb",
                    "train_accuracy",
                    "best_epoch",
                    "seconds_per_epoch",
                    "train_seconds",
                    "device",
                    "runs",
                )
            }
            entries.append(Entry(f"{name} + TTA×{study.tta}", "tta", seed, tta_val, tta_test, tta_curves, {**tta_info, **tta_extra}))
    return entries


def ensemble_entries(singles: list[Entry], base: Config, study: Study) -> list[Entry]:
    entries = []
    for seed in study.seeds:
        members = [next(e for e in singles if e.name == name and e.seed == seed) for name in study.models]
        val_t = members[0].curves["val"][0]
        weights = (
            fit_weights(val_t, [m.curves["val"][1] for m in members])
            if study.ensemble == "fit"
            else np.full(len(members), 1 / len(members))
            if study.ensemble == "equal"
            else check_weights(study.ensemble, study.models)
        )
        shared = [split for split in members[0].curves if all(split in m.curves for m in members)]  # a fold: every member held it out
        curves = {split: (members[0].curves[split][0], combine([m.curves[split][1] for m in members], weights)) for split in shared}
        cfg = replace(base, seed=seed)
        val, test, extra = score(cfg, curves)
        info = {
            "parameters": sum(m.info["parameters"] for m in members),
            "model_size_mb": sum(m.info["model_size_mb"] for m in members),
            "train_seconds": sum(m.info["train_seconds"] for m in members),
            "device": members[0].info["device"],
            "weights": {m.name: float(w) for m, w in zip(members, weights)},
            "runs": [r for m in members for r in m.info["runs"]],
            **extra,
        }
        entries.append(Entry("ensemble", "ensemble", seed, val, test, curves, info))
    return entries


def compare(
    base: Config,
    study: Study | None = None,
    progress: bool | None = None,
    workers: int | None = None,
    shared: Shared | None = None,
    score_test: bool = False,
) -> list[Entry]:
    """Train (or reuse) every model for every seed (``workers`` runs at a time; default: training/runner.py's rule;
    ``shared``: with the workers of every machine that joins the shared study), sealed: test is never loaded. With
    ``score_test``: score models, TTA and ensemble; write the report."""
    study = (study or Study()).validate()
    base = base.validate()
    if base.task != "binary":
        return compare_multilabel(base, study, progress, workers, shared)
    out = Path(study.out)
    out.mkdir(parents=True, exist_ok=True)
    save_study(out, base, study)
    runs = train_runs(base, study, progress, workers, shared)
    if not score_test:
        log.info(f"\n{len(runs)} runs trained; test is sealed (never loaded). Score it once: the same command with --score-test")
        return []
    data = task_data(base)
    for run in runs.values():  # every run, each named: a study folder may hold runs copied in from elsewhere
        run.check_data(data.provenance)
    log.info("\nscoring runs" + (f", {study.tta}-view TTA" if study.tta > 1 else "") + (", ensemble" if study.ensemble_on else ""))
    entries = model_entries(runs, data, study, base)
    if study.ensemble_on:
        entries += ensemble_entries([e for e in entries if e.kind == "model"], base, study)
    entries.sort(key=lambda e: ({"model": 0, "tta": 1, "ensemble": 2}[e.kind], e.name, e.seed))
    write_csv(out / "comparison.csv", entries)
    md, page = write_report(out, base, study, entries, runs, data)
    header, rows = comparison_rows(grouped(entries))
    keep = [header.index(title) for title in ("entry", "seeds", "val acc", "test acc", "ROC-AUC")]
    log.info("\n" + data_label(data.provenance))
    log.info("\n".join("  ".join(f"{row[i]:<30}" for i in keep) for row in [header, *rows]))
    log.info(f"\nwritten: {md}, {page}, {out / 'comparison.csv'}")
    return entries
