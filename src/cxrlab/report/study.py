"""A study: its options (models, seeds, ensemble, TTA, recipes), its entries, the checks that its runs and data
belong together, and training its runs."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml

from cxrlab.config import Config, from_dict, load_yaml, resolve
from cxrlab.core.runs import RunDir
from cxrlab.data.datafile import locate, provenance
from cxrlab.errors import ConfigError, RunDirError
from cxrlab.evaluation.ensemble import check_weights
from cxrlab.evaluation.metrics import roc_auc
from cxrlab.evaluation.scoring import choose_on_evidence, score_probs
from cxrlab.files import atomic_write_text
from cxrlab.models.architectures import MODEL_NAMES, STUDY_MODELS
from cxrlab.training.runner import run_all


def within(path, folder) -> str:
    """A run's path as a study's files (report, CSV) name it: relative to the study's folder, so that the files hold
    no machine's absolute paths and stay true when the folder moves."""
    return os.path.relpath(path, folder)


STUDY_KEYS = ("models", "seeds", "ensemble", "tta", "out", "recipes", "holdout")


ENSEMBLE_RULES = ("equal", "fit", "off")


@dataclass
class Study:
    """What `compare` runs, beyond the training options every run shares."""

    models: list[str] = field(default_factory=lambda: list(STUDY_MODELS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # "equal" (the default: it beat weights fitted on held-out data, docs/results/pneumoniamnist-28), "fit" (weights fitted
    # on val), "off", or one weight per model
    ensemble: str | list[float] = "equal"
    tta: int = 4  # test-time augmentation views (0 or 1: off); 4 lowered val loss for all three models (same results README)
    out: str = "runs/compare"
    # model -> training options of its own over the shared ones (a mapping, or a YAML file such as configs/medmnist_v2.yaml)
    recipes: dict = field(default_factory=dict)
    # K > 1: each seed's run trains on the other folds of a stratified K-fold split of train and holds out fold
    # (seed mod K) for choosing its best epoch and operating point, beside val; 0: train on all of train
    holdout: int = 0

    def validate(self) -> Study:
        unknown = [m for m in self.models if m not in MODEL_NAMES]
        if unknown or not self.models or len(set(self.models)) != len(self.models):
            raise ConfigError(f"models must be distinct names from {', '.join(MODEL_NAMES)}, got {self.models}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct integers, got {self.seeds}")
        if isinstance(self.ensemble, str) and self.ensemble not in ENSEMBLE_RULES:
            try:
                self.ensemble = [float(w) for w in self.ensemble.replace(",", " ").split()]
            except ValueError:
                raise ConfigError(f"ensemble must be 'equal', 'fit', 'off' or one weight per model, got {self.ensemble!r}") from None
        if isinstance(self.ensemble, list):
            try:
                self.ensemble = [float(w) for w in self.ensemble]
            except (TypeError, ValueError):
                raise ConfigError(f"ensemble weights must be numbers, got {self.ensemble}") from None
            check_weights(self.ensemble, self.models)
            if len(self.models) < 2:
                raise ConfigError("an ensemble needs at least two models")
        if self.holdout == 1 or self.holdout < 0:
            raise ConfigError(f"holdout must be 0 (off) or a number of folds of at least 2, got {self.holdout}")
        if self.tta < 0:
            raise ConfigError(f"tta must be 0 (off) or a number of views, got {self.tta}")
        if not isinstance(self.recipes, dict) or set(self.recipes) - set(self.models):
            raise ConfigError(f"recipes must map models of the study to options or a YAML file, got {self.recipes!r}")
        self.recipes = {m: load_yaml(r) if isinstance(r, str) else dict(r or {}) for m, r in self.recipes.items()}
        for model, options in self.recipes.items():
            options.pop("model", None)  # the recipe's own model line, if any, names the model it is for
            if {"out", "seed"} & set(options):
                raise ConfigError(f"recipe for {model}: out and seed are set by compare, not by a recipe")
        return self

    def config_for(self, base: Config, model: str, seed: int) -> Config:
        """The resolved config of one run: shared options, the model's recipe on top, then model, seed and run folder."""
        values = {
            **base.to_dict(),
            **self.recipes.get(model, {}),
            "model": model,
            "seed": seed,
            "out": str(Path(self.out) / "runs" / f"{model}-seed{seed}"),
        }
        if self.holdout:
            values.update(cv_folds=self.holdout, cv_fold=seed % self.holdout)
        return resolve(from_dict(values, source=f"recipe for {model}"))

    @property
    def ensemble_on(self) -> bool:
        return self.ensemble != "off" and len(self.models) > 1


def study_from(section: dict | None, overrides: dict, source: str = "config") -> Study:
    """A Study from a config file's `compare:` section, with command-line values on top."""
    section = dict(section or {})
    if set(section) - set(STUDY_KEYS):
        raise ConfigError(
            f"{source}: the compare section takes {', '.join(STUDY_KEYS)}, got {', '.join(sorted(set(section) - set(STUDY_KEYS)))}"
        )
    section.update(overrides)
    if isinstance(section.get("ensemble"), list) and len(section["ensemble"]) == 1:
        section["ensemble"] = str(section["ensemble"][0])  # --ensemble equal / fit / off
    return Study(**section).validate()


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


def check_data_once(base: Config, configs: list[Config]) -> None:
    """Locate (or download) and verify the data file once, here, before any worker starts, and refuse runs on disk
    that were trained on another file: one message, not one per worker."""
    path = locate(base.data_root, base.size, download=base.download, dataset=base.dataset)
    md5 = provenance(path, base.size, base.dataset)["md5"]
    other = []
    for cfg in configs:
        run = RunDir(cfg.out)
        if run.data.is_file() and run.read_json(run.data).get("md5") != md5:
            other.append(str(run.path))
    if other:
        raise RunDirError(
            f"the data file {path} (MD5 {md5}) is not the one these runs were trained on: {', '.join(other)}; "
            "point --data-root at their file, or choose another --out"
        )


def train_runs(base: Config, study: Study, echo, progress, workers: int | None = None) -> dict[tuple[str, int], RunDir]:
    """Every model x seed run: reused, resumed or trained, ``workers`` at a time (default: the measured rule, training/runner.py)."""
    configs = {(name, seed): study.config_for(base, name, seed) for seed in study.seeds for name in study.models}
    check_data_once(base, list(configs.values()))
    runs = run_all(configs, echo, progress, workers, base.threads, status_dir=study.out)
    check_compatible(list(runs.values()))
    return runs


def score(cfg: Config, curves: dict) -> tuple[dict, dict, dict]:
    """Val and test metrics of an entry's probabilities (``curves``: split -> (targets, P(positive)); 'fold': the
    seed's held-out fold of train, when the study holds one out), by the scoring protocol: operating point and
    temperature chosen on the evidence (the fold and val, or val alone), applied unchanged to val and test.
    The third dict holds the operating point and, with a fold, the check: the point chosen on the fold alone and
    what it gave on val, which it never saw."""
    evidence = [curves[s] for s in ("fold", "val") if s in curves]
    targets, probs = np.concatenate([t for t, _ in evidence]), np.concatenate([p for _, p in evidence])
    point, temperature = choose_on_evidence(cfg, targets, probs, "held-out fold + val" if "fold" in curves else "val", keep_going=True)
    val, test = (
        score_probs(t, p, point, temperature, cfg.n_bootstrap, cfg.seed, cfg.prevalence) for t, p in (curves["val"], curves["test"])
    )
    extra = {"point": point.to_dict(), "evidence_roc_auc": roc_auc(targets, probs)}
    if "fold" in curves:
        alone, _ = choose_on_evidence(cfg, *curves["fold"], "held-out fold", keep_going=True)
        realised = score_probs(*curves["val"], alone, 1.0, 0, cfg.seed)
        extra["check"] = {
            "threshold": alone.threshold,
            "rule_out": alone.rule_out,
            "rule_in": alone.rule_in,
            **{f"val_{k}": realised.get(k) for k in CHECK_KEYS},
        }
    return val, test, extra


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
