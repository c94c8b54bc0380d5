"""k-fold cross-validation over train: fold k trains on the other folds and selects (best epoch, threshold,
temperature) on fold k; every fold model is then scored on the official val and test splits, and the fold
models together form an ensemble (mean probability; its threshold chosen on the official val).

    OUT/fold<k>/            one run directory per fold (reused when the config matches)
    OUT/cv.csv              one line per fold and for the fold ensemble
    OUT/cv.md, cv.html      mean ± sd over folds, the ensemble row, the run directories
"""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from pathlib import Path

import numpy as np

from cxrlab.config import Config, resolve
from cxrlab.console import logger
from cxrlab.data.task import data_label, task_data
from cxrlab.errors import ConfigError
from cxrlab.evaluation.inference import load_trained
from cxrlab.evaluation.scoring import positive_view, score_probs
from cxrlab.files import atomic_write_text
from cxrlab.report.document import Document
from cxrlab.report.study import check_compatible, check_data_once, choose, score, within
from cxrlab.report.tables import mean_sd
from cxrlab.training.runner import run_all
from cxrlab.training.shared import Shared

log = logger(__name__)

CV_KEYS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1", "roc_auc", "ece")


def cross_validate(
    base: Config, folds: int, out: str | Path, progress: bool | None = None, workers: int | None = None, shared: Shared | None = None
) -> dict:
    """Train (or reuse) the fold runs, ``workers`` at a time (default: training/runner.py's rule; ``shared``: with the
    workers of every machine that joins the shared study); return
    {'folds': [{'val': ..., 'test': ...}], 'ensemble': {...}}."""
    if folds < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got {folds}")
    base = base.validate()
    if base.task != "binary":
        raise ConfigError("cross-validation folds are stratified by class: binary task only")
    out = Path(out)
    configs = {k: resolve(replace(base, cv_folds=folds, cv_fold=k, out=str(out / f"fold{k}"), sealed=True)) for k in range(folds)}
    md5 = check_data_once(base, list(configs.values()))
    runs = list(run_all(configs, progress, workers, base.threads, status_dir=out, shared=shared, identity={"data_md5": md5}).values())
    check_compatible(runs)
    data = task_data(base, task="binary")
    results, fold_probs = [], {"val": [], "test": []}
    targets = {
        split: positive_view(data.splits[split].targets.numpy(), np.zeros(len(data.splits[split])), data.classes, base.positive)[0]
        for split in ("val", "test")
    }  # the same for every fold model
    for run in runs:
        trained = load_trained(run.path)
        scored = {}
        for split in ("val", "test"):
            probs = positive_view(
                data.splits[split].targets.numpy(), trained.probs(data.splits[split].images)[:, 0], data.classes, trained.cfg.positive
            )[1]
            fold_probs[split].append(probs)
            scored[split] = score_probs(targets[split], probs, trained.point, trained.temperature, base.n_bootstrap, base.seed)
        results.append({"run": within(run.path, out), "val": scored["val"], "test": scored["test"]})
    curves = {split: (targets[split], np.mean(fold_probs[split], axis=0)) for split in ("val", "test")}
    point, temperature, _ = choose(base, {"val": curves["val"]})  # on the official val
    ensemble = {**score(base, curves, point, temperature), "runs": [r["run"] for r in results]}
    write_cv_report(out, base, results, ensemble, data_label(data.provenance), data.is_phantom)
    for split in ("val", "test"):
        log.info(
            f"{split}: "
            + "  ".join(f"{k} {mean_sd(np.array([r[split][k] for r in results]))}" for k in ("accuracy", "roc_auc"))
            + f"   fold ensemble: accuracy {ensemble[split]['accuracy']:.3f} roc_auc {ensemble[split]['roc_auc']:.3f}"
        )
    log.info(f"written: {out / 'cv.md'}, {out / 'cv.html'}, {out / 'cv.csv'}")
    return {"folds": results, "ensemble": ensemble}


def write_cv_report(out: Path, base: Config, results: list[dict], ensemble: dict, label: str, phantom: bool) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["entry", *(f"{split}_{k}" for split in ("val", "test") for k in CV_KEYS), "runs"])
    for i, r in enumerate(results):
        writer.writerow([f"fold{i}", *(r[split][k] for split in ("val", "test") for k in CV_KEYS), r["run"]])
    writer.writerow(["fold ensemble", *(ensemble[split][k] for split in ("val", "test") for k in CV_KEYS), " ".join(ensemble["runs"])])
    atomic_write_text(out / "cv.csv", buffer.getvalue())

    doc = Document(f"cxrlab {len(results)}-fold cross-validation: {base.model}", warning=label if phantom else None)
    doc.text(
        f"Data: {label}. Stratified {len(results)}-fold split of train (the same folds for every model and seed); fold k trains "
        "on the other folds and chooses its best epoch, threshold and temperature on fold k. Every fold model is scored on the "
        "official val and test splits. The fold ensemble averages the fold models' probabilities; its threshold "
        f"(rule `{base.threshold_rule}`) is chosen on the official val."
    )
    header = ["entry", *(f"{split} {k}" for split in ("val", "test") for k in ("accuracy", "roc_auc", "balanced_accuracy"))]
    rows = [
        [f"fold {i}", *(f"{r[split][k]:.3f}" for split in ("val", "test") for k in ("accuracy", "roc_auc", "balanced_accuracy"))]
        for i, r in enumerate(results)
    ]
    rows.append(
        [
            "**mean ± sd**",
            *(
                mean_sd(np.array([r[split][k] for r in results]))
                for split in ("val", "test")
                for k in ("accuracy", "roc_auc", "balanced_accuracy")
            ),
        ]
    )
    rows.append(
        ["fold ensemble", *(f"{ensemble[split][k]:.3f}" for split in ("val", "test") for k in ("accuracy", "roc_auc", "balanced_accuracy"))]
    )
    doc.table(header, rows)
    doc.heading("All metrics on test, mean ± sd over folds")
    doc.table(
        ["metric", "folds", "fold ensemble"],
        [[k, mean_sd(np.array([r["test"][k] for r in results])), f"{ensemble['test'][k]:.3f}"] for k in CV_KEYS],
    )
    doc.heading("Runs")
    doc.bullets([f"fold {i}: `{r['run']}`" for i, r in enumerate(results)])
    doc.write(out, "cv")
