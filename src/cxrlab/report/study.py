"""A study: its options (models, seeds, ensemble, TTA, recipes), its entries, the checks that its runs and data
belong together, and training its runs."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import yaml

from cxrlab.config import Config, Study, resolve
from cxrlab.core.runs import RunDir
from cxrlab.data.datafile import locate, provenance
from cxrlab.errors import RunDirError
from cxrlab.evaluation.metrics import roc_auc
from cxrlab.evaluation.operating_point import OperatingPoint
from cxrlab.evaluation.scoring import choose_on_evidence, score_probs
from cxrlab.files import atomic_write_text
from cxrlab.training.runner import run_all
from cxrlab.training.shared import Shared


def within(path, folder) -> str:
    """A run's path as a study's files (report, CSV) name it: relative to the study's folder, so that the files hold
    no machine's absolute paths and stay true when the folder moves."""
    return os.path.relpath(path, folder)


@dataclass
class Entry:
    """One row for one seed: a model's run, the same run with test-time augmentation, or an ensemble."""

    name: str
    kind: str  # model, tta, ensemble
    seed: int
    val: dict
    test: dict
    curves: dict  # split -> (targets, positive probabilities)
    info: dict  # parameters, sizes, timings, run directories, ensemble weights


def check_compatible(runs: list[RunDir]) -> None:
    """Runs on different data files, sizes, tasks or classes never share a table or an ensemble."""
    seen: dict[tuple, list[str]] = {}
    for run in runs:
        summary = run.require_finished()
        dataset = run.read_json(run.data).get("dataset", "chestmnist") if run.data.is_file() else "chestmnist"
        key = (
            dataset,
            summary["data_md5"],
            summary["size"],
            summary.get("task", "binary"),
            tuple(summary["classes"]),
            summary.get("positive_class"),
        )
        seen.setdefault(key, []).append(str(run.path))
    if len(seen) > 1:
        groups = "; ".join(
            f"data set {k[0]}, data MD5 {k[1][:8]}…, size {k[2]}, task {k[3]}, classes {'/'.join(k[4])}: {', '.join(v)}"
            for k, v in seen.items()
        )
        raise RunDirError(
            f"these runs do not share data set, data file, size, task and classes, so they cannot be compared or ensembled: {groups}"
        )


def check_data_once(base: Config, configs: list[Config]) -> str:
    """Locate (or download) and verify the data file once, here, before any worker starts, and refuse runs on disk
    that were trained on another file: one message, not one per worker. Returns the file's MD5."""
    path = locate(base.data_root, base.size, download=base.download, dataset=base.dataset)
    found = provenance(path, base.size, base.dataset)
    other = [str(RunDir(cfg.out).path) for cfg in configs if RunDir(cfg.out).data_differs(found)]
    if other:
        raise RunDirError(
            f"the data file {path} (MD5 {found['md5']}) is not the one these runs were trained on: {', '.join(other)}; "
            "point --data-root at their file, or choose another --out"
        )
    return found["md5"]


def train_runs(
    base: Config, study: Study, progress, workers: int | None = None, shared: Shared | None = None
) -> dict[tuple[str, int], RunDir]:
    """Every model x seed run: reused, resumed or trained, ``workers`` at a time (default: the measured rule,
    training/runner.py); with ``shared``, by workers on every machine that joins the shared study."""
    configs = {(name, seed): study.config_for(base, name, seed) for seed in study.seeds for name in study.models}
    md5 = check_data_once(base, list(configs.values()))
    runs = run_all(configs, progress, workers, base.threads, status_dir=study.out, shared=shared, identity={"data_md5": md5})
    check_compatible(list(runs.values()))
    return runs


def choose(cfg: Config, curves: dict) -> tuple[OperatingPoint, float, dict]:
    """An entry's operating point and temperature, chosen on its evidence only (``curves``: split -> (targets,
    P(positive)); the evidence is 'fold', the seed's held-out fold of train when the study holds one out, and 'val').
    The dict holds the evidence ROC-AUC and, with a fold, the check: the point chosen on the fold alone and what it
    gave on val, which it never saw."""
    evidence = [curves[s] for s in ("fold", "val") if s in curves]
    targets, probs = np.concatenate([t for t, _ in evidence]), np.concatenate([p for _, p in evidence])
    point, temperature = choose_on_evidence(cfg, targets, probs, "held-out fold + val" if "fold" in curves else "val", keep_going=True)
    extra = {"evidence_roc_auc": roc_auc(targets, probs)}
    if "fold" in curves:
        alone, _ = choose_on_evidence(cfg, *curves["fold"], "held-out fold", keep_going=True)
        realised = score_probs(*curves["val"], alone, 1.0, 0, cfg.seed)
        extra["check"] = {
            "threshold": alone.threshold,
            "rule_out": alone.rule_out,
            "rule_in": alone.rule_in,
            **{f"val_{k}": realised.get(k) for k in CHECK_KEYS},
        }
    return point, temperature, extra


def score(cfg: Config, curves: dict, point: OperatingPoint, temperature: float) -> dict[str, dict]:
    """Every metric of each labelled split of ``curves`` but the fold, at the operating point and temperature
    already chosen (and written down): val always, test once the study is scored."""
    return {
        split: score_probs(t, p, point, temperature, cfg.n_bootstrap, cfg.seed, cfg.prevalence)
        for split, (t, p) in curves.items()
        if split in ("val", "test")
    }


CHECK_KEYS = ("sensitivity", "specificity", "referred", "answered_accuracy", "answered_sensitivity", "answered_specificity")


def train_accuracy_at_best(run: RunDir, best_epoch: int) -> float:
    with open(run.history) as fh:
        rows = list(csv.DictReader(fh))
    return float(rows[best_epoch - 1]["train_accuracy"])


def recipe_differences(base: Config, study: Study, runs: dict) -> dict[str, str]:
    """Per model with a recipe: 'option value' for every training option its runs have that the shared config does not."""
    shared = resolve(replace(base, model=study.models[0])).to_dict()
    ignored = {"model", "seed", "out", "lr"}  # lr: listed per model above
    out = {}
    for model in study.recipes:
        own = runs[model, study.seeds[0]].load_config().to_dict()
        changed = [f"{k} {own[k]}" for k in own if k not in ignored and own[k] != shared.get(k)]
        if changed:
            out[model] = ", ".join(changed)
    return out


def save_study(out: Path, base: Config, study: Study) -> Path:
    """compare.yaml: the training options and the study's, in the layout `compare --config` reads."""
    values = base.to_dict()
    for key in ("model", "out", "seed"):
        values.pop(key)
    study_values = {"models": study.models, "seeds": study.seeds, "ensemble": study.ensemble, "tta": study.tta, "out": str(out)}
    if study.holdout:
        study_values["holdout"] = study.holdout
    if study.recipes:
        study_values["recipes"] = study.recipes
    path = out / "compare.yaml"
    atomic_write_text(path, yaml.safe_dump({"compare": study_values, **values}, sort_keys=False))
    return path
