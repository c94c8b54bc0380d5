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

import csv
import io
import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import yaml

from cxrlab.config import Config, from_dict, load_yaml
from cxrlab.models.architectures import MODEL_NAMES, STUDY_MODELS
from cxrlab.data.datafile import locate, provenance
from cxrlab.data.datasets import get_dataset
from cxrlab.data.task import TaskData, data_label, task_data
from cxrlab.errors import ConfigError, RunDirError
from cxrlab.evaluation import plots
from cxrlab.evaluation.ensemble import check_weights, combine, fit_weights
from cxrlab.evaluation.scoring import choose_threshold, positive_view
from cxrlab.evaluation.explain import Explainer, val_grid
from cxrlab.evaluation.inference import load_trained, predict_probs, predict_probs_tta
from cxrlab.evaluation.metrics import calibration_metrics, evaluate_probs, fit_temperature
from cxrlab.export.bench import deployed_speed
from cxrlab.files import atomic_write_text
from cxrlab.report.document import Document
from cxrlab.core.runs import RunDir
from cxrlab.config import resolve
from cxrlab.training.runner import run_all

STUDY_KEYS = ("models", "seeds", "ensemble", "tta", "out", "recipes")
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

    def validate(self) -> "Study":
        unknown = [m for m in self.models if m not in MODEL_NAMES]
        if unknown or not self.models or len(set(self.models)) != len(self.models):
            raise ConfigError(f"models must be distinct names from {', '.join(MODEL_NAMES)}, got {self.models}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct integers, got {self.seeds}")
        if isinstance(self.ensemble, str):
            if self.ensemble not in ENSEMBLE_RULES:
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
        values = {**base.to_dict(), **self.recipes.get(model, {}), "model": model, "seed": seed,
                  "out": str(Path(self.out) / "runs" / f"{model}-seed{seed}")}
        return resolve(from_dict(values, source=f"recipe for {model}"))

    @property
    def ensemble_on(self) -> bool:
        return self.ensemble != "off" and len(self.models) > 1


def study_from(section: dict | None, overrides: dict, source: str = "config") -> Study:
    """A Study from a config file's `compare:` section, with command-line values on top."""
    section = dict(section or {})
    if set(section) - set(STUDY_KEYS):
        raise ConfigError(f"{source}: the compare section takes {', '.join(STUDY_KEYS)}, got {', '.join(sorted(set(section) - set(STUDY_KEYS)))}")
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


# ---- runs ------------------------------------------------------------------------------------------------


def check_compatible(runs: list[RunDir]) -> None:
    """Runs on different data files, sizes, tasks or classes never share a table or an ensemble."""
    seen: dict[tuple, list[str]] = {}
    for run in runs:
        summary = run.require_finished()
        dataset = run.read_json(run.data).get("dataset", "chestmnist") if run.data.is_file() else "chestmnist"
        key = (dataset, summary["data_md5"], summary["size"], summary.get("task", "binary"), tuple(summary["classes"]), summary.get("positive_class"))
        seen.setdefault(key, []).append(str(run.path))
    if len(seen) > 1:
        groups = "; ".join(f"data set {k[0]}, data MD5 {k[1][:8]}…, size {k[2]}, task {k[3]}, classes {'/'.join(k[4])}: {', '.join(v)}"
                           for k, v in seen.items())
        raise RunDirError(f"these runs do not share data set, data file, size, task and classes, so they cannot be compared or ensembled: {groups}")


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
        raise RunDirError(f"the data file {path} (MD5 {md5}) is not the one these runs were trained on: {', '.join(other)}; "
                          "point --data-root at their file, or choose another --out")


def train_runs(base: Config, study: Study, echo, progress, workers: int | None = None) -> dict[tuple[str, int], RunDir]:
    """Every model x seed run: reused, resumed or trained, ``workers`` at a time (default: the measured rule, training/runner.py)."""
    configs = {(name, seed): study.config_for(base, name, seed) for seed in study.seeds for name in study.models}
    check_data_once(base, list(configs.values()))
    runs = run_all(configs, echo, progress, workers, base.threads, status_dir=study.out)
    check_compatible(list(runs.values()))
    return runs


# ---- scoring ---------------------------------------------------------------------------------------------


def score(cfg: Config, curves: dict) -> tuple[dict, dict]:
    """Val and test metrics of probabilities that no run scored (TTA, ensembles), by the runs' own rules:
    threshold and temperature chosen on val, applied unchanged to test."""
    (val_t, val_p), (test_t, test_p) = curves["val"], curves["test"]
    threshold = choose_threshold(cfg, val_t, val_p)
    temperature = fit_temperature(val_t, val_p)
    out = []
    for targets, probs in ((val_t, val_p), (test_t, test_p)):
        metrics = evaluate_probs(targets, probs, threshold, cfg.n_bootstrap, cfg.seed)
        metrics.update(calibration_metrics(targets, probs, temperature))
        out.append(metrics)
    return out[0], out[1]


def train_accuracy_at_best(run: RunDir, best_epoch: int) -> float:
    with open(run.history) as fh:
        rows = list(csv.DictReader(fh))
    return float(rows[best_epoch - 1]["train_accuracy"])


def model_entries(runs: dict, data: TaskData, study: Study, base: Config, echo) -> list[Entry]:
    """Every run scored by the study's rules (threshold rule, bootstrap), whatever its own were: the same rules for all rows."""
    entries, speed = [], {}
    for (name, seed), run in runs.items():
        trained = load_trained(run.path)
        summary = run.read_json(run.summary)
        cfg = replace(trained.cfg, threshold=base.threshold_rule, target_sensitivity=base.target_sensitivity, n_bootstrap=base.n_bootstrap)
        curves, tta_curves = {}, {}
        for split in ("val", "test"):
            images = data.splits[split].images
            targets = data.splits[split].targets.numpy()
            curves[split] = positive_view(targets, predict_probs(trained.model, images, cfg, trained.device)[:, 0], data.classes, cfg.positive)
            if study.tta > 1:
                probs = predict_probs_tta(trained.model, images, cfg, trained.device, study.tta, seed=seed)
                tta_curves[split] = positive_view(targets, probs[:, 0], data.classes, cfg.positive)
        if name not in speed:  # per architecture, once: the first seed's run
            echo(f"timing inference (onnxruntime): {name}")
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
            "runs": [str(run.path)],
            "ood_flagged": (summary.get("ood") or {}).get("flagged"),  # None: a run fitted before the check (cxrlab ood RUN)
        }
        val, test = score(cfg, curves)
        entries.append(Entry(name, "model", seed, val, test, curves, info))
        if tta_curves:
            tta_val, tta_test = score(cfg, tta_curves)
            tta_info = {k: info[k] for k in ("parameters", "model_size_mb", "train_accuracy", "best_epoch", "seconds_per_epoch", "train_seconds", "device", "runs")}
            entries.append(Entry(f"{name} + TTA×{study.tta}", "tta", seed, tta_val, tta_test, tta_curves, tta_info))
    return entries


def ensemble_entries(singles: list[Entry], base: Config, study: Study) -> list[Entry]:
    entries = []
    for seed in study.seeds:
        members = [next(e for e in singles if e.name == name and e.seed == seed) for name in study.models]
        val_t = members[0].curves["val"][0]
        weights = (
            fit_weights(val_t, [m.curves["val"][1] for m in members]) if study.ensemble == "fit"
            else np.full(len(members), 1 / len(members)) if study.ensemble == "equal" else check_weights(study.ensemble, study.models)
        )
        curves = {split: (members[0].curves[split][0], combine([m.curves[split][1] for m in members], weights)) for split in ("val", "test")}
        cfg = replace(base, seed=seed)
        val, test = score(cfg, curves)
        info = {
            "parameters": sum(m.info["parameters"] for m in members),
            "model_size_mb": sum(m.info["model_size_mb"] for m in members),
            "train_seconds": sum(m.info["train_seconds"] for m in members),
            "device": members[0].info["device"],
            "weights": {m.name: float(w) for m, w in zip(members, weights)},
            "runs": [r for m in members for r in m.info["runs"]],
        }
        entries.append(Entry("ensemble", "ensemble", seed, val, test, curves, info))
    return entries


# ---- tables ----------------------------------------------------------------------------------------------

METRIC_COLUMNS = (  # (key, title, source): source 'test', 'val' or 'info'
    ("train_accuracy", "train acc", "info"),
    ("accuracy", "val acc", "val"),
    ("accuracy", "test acc", "test"),
    ("balanced_accuracy", "bal acc", "test"),
    ("sensitivity", "sensitivity", "test"),
    ("specificity", "specificity", "test"),
    ("f1", "F1", "test"),
    ("roc_auc", "ROC-AUC", "test"),
)


def values(entries: list[Entry], key: str, source: str) -> np.ndarray:
    got = [(e.info if source == "info" else getattr(e, source)).get(key) for e in entries]
    return np.array([np.nan if v is None else v for v in got], dtype=float)


def mean_sd(v: np.ndarray, digits: int = 3) -> str:
    v = v[~np.isnan(v)]
    if not len(v):
        return "—"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}" if len(v) > 1 else f"{v.mean():.{digits}f}"


def grouped(entries: list[Entry]) -> dict[str, list[Entry]]:
    groups: dict[str, list[Entry]] = {}
    for e in entries:
        groups.setdefault(e.name, []).append(e)
    return groups


def single_run_ci(entry: Entry, key: str, source: str) -> str:
    """' [low, high]': the bootstrap 95% CI of one run (the first seed's), where the metric has one."""
    metrics = entry.info if source == "info" else getattr(entry, source)
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    return "" if low is None or high is None else f" [{low:.3f}, {high:.3f}]"


def sharing_note(singles: list[Entry]) -> str:
    """How the training timings were taken: s/epoch of runs that shared the machine is not one run's speed alone."""
    ways = sorted({(e.info.get("side_by_side"), e.info.get("threads")) for e in singles}, key=str)
    text = "; ".join("not recorded (runs from before cxrlab recorded it)" if n is None else
                     f"{n} run{'s' * (n != 1)} at a time, {t} thread{'s' * (t != 1)} each" for n, t in ways)
    return (f"training timings (s/epoch, train s) were measured with {text}: runs side by side each take longer per epoch, "
            "and the study finishes sooner (benchmarks/README.md)")


def speed_note(singles: list[Entry]) -> str:
    first = singles[0].info
    return (f"inference columns: {first['backend']}, the backend predict and serve deploy, measured in this process after training "
            f"on the first seed's run: median batch-1 latency over test images, and throughput at batch {first['batch']}; "
            "INT8 only where `cxrlab export` shipped an INT8 model")


def comparison_rows(groups: dict[str, list[Entry]]) -> tuple[list[str], list[list[str]]]:
    int8 = any("int8_ms_per_image" in e.info for g in groups.values() for e in g)
    header = ["entry", "seeds", "params", "size MB"] + [t for _, t, _ in METRIC_COLUMNS] + [
        "epochs to best", "s/epoch", "train s (total)", "device", "ms/image (ORT fp32, batch 1)", "images/s (ORT fp32, batched)"] + (
        ["ms/image (ORT INT8, batch 1)", "images/s (ORT INT8, batched)"] if int8 else [])
    rows = []
    for name, group in groups.items():
        first = group[0]
        params = first.info["parameters"]
        row = [name, str(len(group)), f"{params / 1e6:.2f}M", f"{first.info['model_size_mb']:.1f}"]
        row += [mean_sd(values(group, key, source)) + single_run_ci(first, key, source) for key, _, source in METRIC_COLUMNS]
        row.append(mean_sd(values(group, "best_epoch", "info"), 1))
        row.append(mean_sd(values(group, "seconds_per_epoch", "info"), 1))
        row.append(mean_sd(values(group, "train_seconds", "info"), 0))
        row.append(first.info["device"])
        for prefix in ("", "int8_") if int8 else ("",):
            row.append(f"{first.info[prefix + 'ms_per_image']:.2f}" if prefix + "ms_per_image" in first.info else "—")
            row.append(f"{first.info[prefix + 'images_per_s']:.0f}" if prefix + "images_per_s" in first.info else "—")
        rows.append(row)
    return header, rows


WINNER_CRITERIA = (  # (title, key, source, higher is better)
    ("test accuracy", "accuracy", "test", True),
    ("balanced accuracy", "balanced_accuracy", "test", True),
    ("sensitivity", "sensitivity", "test", True),
    ("specificity", "specificity", "test", True),
    ("F1", "f1", "test", True),
    ("ROC-AUC", "roc_auc", "test", True),
    ("calibration (ECE after temperature scaling)", "ece_calibrated", "test", False),
    ("fewest parameters", "parameters", "info", False),
    ("fastest inference (onnxruntime fp32 ms/image, batch 1)", "ms_per_image", "info", False),
    ("shortest training (s)", "train_seconds", "info", False),
)


def winners(groups: dict[str, list[Entry]]) -> list[list[str]]:
    """The best entry per criterion by its mean over seeds; ties and entries without the value are named."""
    rows = []
    for title, key, source, higher in WINNER_CRITERIA:
        means = {name: np.nanmean(values(g, key, source)) if not np.isnan(values(g, key, source)).all() else np.nan for name, g in groups.items()}
        means = {k: v for k, v in means.items() if not np.isnan(v)}
        if not means:
            continue
        best = max(means.values()) if higher else min(means.values())
        names = [k for k, v in means.items() if v == best]
        rows.append([title, " = ".join(names), f"{best / 1e6:.2f}M" if key == "parameters" else f"{best:.4g}"])
    return rows


def calibration_rows(groups: dict[str, list[Entry]]) -> list[list[str]]:
    return [
        [name, mean_sd(values(g, "temperature", "test"), 2), mean_sd(values(g, "ece", "test")), mean_sd(values(g, "ece_calibrated", "test")),
         mean_sd(values(g, "brier", "test")), mean_sd(values(g, "brier_calibrated", "test")), mean_sd(values(g, "threshold", "test"))]
        for name, g in groups.items()
    ]


def ood_rows(singles: list[Entry]) -> tuple[list[str], list[list[str]]] | None:
    """Per model, mean ± sd over seeds of the share each set had flagged; None when no run has a check."""
    measured = [e for e in singles if e.info.get("ood_flagged")]
    if not measured:
        return None
    sets = list(measured[0].info["ood_flagged"])
    rows = []
    for name, group in grouped(measured).items():
        rows.append([name, str(len(group))] + [mean_sd(np.array([100 * e.info["ood_flagged"].get(k, np.nan) for e in group]), 1) + " %" for k in sets])
    missing = sorted({e.name for e in singles} - {e.name for e in measured})
    if missing:
        rows += [[name, "0"] + ["no check (cxrlab ood RUN)"] * len(sets) for name in missing]
    return ["model", "runs", *sets], rows


SPEED_KEYS = ("ms_per_image", "images_per_s", "int8_ms_per_image", "int8_images_per_s")  # onnxruntime fp32, then the shipped INT8 model
CSV_KEYS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "roc_auc_ci_low", "roc_auc_ci_high",
            "pr_auc", "ece", "ece_calibrated", "brier", "brier_calibrated", "temperature", "threshold")


def write_csv(path: Path, entries: list[Entry]) -> None:
    buffer = io.StringIO()
    fields = ["entry", "kind", "seed", "val_accuracy", "val_roc_auc", *CSV_KEYS, "parameters", "train_seconds", *SPEED_KEYS, "weights", "runs"]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for e in entries:
        writer.writerow({
            "entry": e.name, "kind": e.kind, "seed": e.seed, "val_accuracy": e.val["accuracy"], "val_roc_auc": e.val["roc_auc"],
            **{k: e.test.get(k) for k in CSV_KEYS}, **{k: e.info.get(k) for k in ("parameters", "train_seconds", *SPEED_KEYS)},
            "weights": " ".join(f"{k}={v:.2f}" for k, v in e.info.get("weights", {}).items()), "runs": " ".join(e.info["runs"]),
        })
    atomic_write_text(path, buffer.getvalue())


# ---- figures and report ----------------------------------------------------------------------------------


def figures(out: Path, entries: list[Entry], runs: dict, study: Study, base: Config, label: str, data: TaskData) -> dict[str, list[Path]]:
    folder = out / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    first = study.seeds[0]
    shown = [e for e in entries if e.seed == first]
    made: dict[str, list[Path]] = {"overlay": [], "curves": [], "confusion": [], "grid": [], "gradcam": []}
    test_curves = {e.name: e.curves["test"] for e in shown}
    made["overlay"].append(plots.roc_overlay(test_curves, folder / "roc_test.png", f"ROC on test (seed {first})", label))
    made["overlay"].append(plots.pr_overlay(test_curves, folder / "pr_test.png", f"precision-recall on test (seed {first})", label))
    made["overlay"].append(plots.reliability(test_curves, folder / "reliability_test.png", f"reliability on test, before temperature scaling (seed {first})", label))
    for name in study.models:
        run = runs[name, first]
        for kind, source in (("curves", "curves.png"), ("confusion", "confusion_test.png"), ("grid", "val_grid.png")):
            if (run.plots / source).is_file():
                target = folder / f"{kind}_{name}.png"
                shutil.copyfile(run.plots / source, target)
                made[kind].append(target)
        made["gradcam"].append(val_grid(Explainer(load_trained(run.path, "cpu")), folder / f"gradcam_{name}.png"))
    for e in shown:
        if e.kind != "model":
            path = folder / f"confusion_{e.name.replace(' ', '').replace('+', '_').replace('×', 'x')}.png"
            made["confusion"].append(plots.confusion_matrix(e.test, data.classes, base.positive, path, f"{e.name}: confusion matrix, test", label))
    return made


def write_report(out: Path, base: Config, study: Study, entries: list[Entry], runs: dict, data: TaskData, echo) -> tuple[Path, Path]:
    label = data_label(data.provenance)
    groups = grouped(entries)
    figs = figures(out, entries, runs, study, base, label, data)
    prov = data.provenance
    doc = Document("cxrlab model comparison", warning=f"{label}: every number below describes synthetic images" if data.is_phantom else None)

    doc.heading("Data")
    counts = "; ".join(f"{split} {s.counts()[0]:,} {data.classes[0]} / {s.counts()[1]:,} {data.classes[1]}" for split, s in data.splits.items())
    doc.bullets([label, f"file `{prov['file']}`, MD5 `{prov['md5']}` (official: `{prov['official_md5']}`)", f"{data.size} px; images per split and class: {counts}"])

    doc.heading("Protocol")
    first = runs[study.models[0], study.seeds[0]].load_config()
    doc.bullets([
        "trained on train; best epoch, decision threshold and temperature chosen on val; reported on test, once",
        f"positive class: **{base.positive}**; threshold rule: `{base.threshold_rule}`"
        + (f" (target sensitivity {base.target_sensitivity})" if base.threshold_rule == "sensitivity" else "")
        + f"; best epoch by val `{base.select_metric}`",
        f"seeds {', '.join(map(str, study.seeds))}: tables give mean ± sd over seeds, and in brackets the bootstrap 95% CI "
        f"({base.n_bootstrap} resamples) of the first seed's run",
        f"up to {first.total_epochs} epochs, batch {base.batch_size}, Adam, BCE, "
        + ("ReduceLROnPlateau on val loss" if base.lr_schedule == "plateau" else f"lr x{base.lr_gamma:g} after epochs {base.lr_milestones}")
        + f", early stopping {base.early_stopping or 'off'}, BatchNorm momentum {base.bn_momentum if base.bn_momentum is not None else 'torchvision'}; "
        "learning rates per model: " + ", ".join(f"{m} {runs[m, study.seeds[0]].load_config().lr:g}" for m in study.models),
        f"ensemble: {'off' if not study.ensemble_on else 'weights fitted on val (log loss, simplex grid)' if study.ensemble == 'fit' else 'equal weights' if study.ensemble == 'equal' else 'weights ' + ', '.join(f'{w:g}' for w in study.ensemble)}; "
        f"test-time augmentation: {'off' if study.tta < 2 else f'{study.tta} views (the image, then flips, shifts up to 5%, rotations up to 10°)'}",
        f"regularisation: label smoothing {base.label_smoothing:g}, mixup alpha {base.mixup:g}, dropout {base.dropout}, "
        f"erasing p {base.aug_erasing:g}, perspective {base.aug_perspective:g}" + (f"; fine-tuning stages `{base.finetune}`" if base.finetune else ""),
    ])
    differing = recipe_differences(base, study, runs)
    if differing:
        doc.text("Models with a recipe of their own (options that differ from the shared ones above): "
                 + "; ".join(f"**{m}**: {text}" for m, text in differing.items()) + ".")
    spec = get_dataset(base.dataset)
    if spec.published and base.task == "binary":
        doc.heading(f"Published results on {spec.title} (not measured here)")
        doc.table(["method (published)", "test AUC", "test ACC"], [[m, f"{auc:.3f}", f"{acc:.3f}"] for m, auc, acc in spec.published])
        doc.text(f"Source: {spec.published_source}. cxrlab's rows above are its own measurements on the same test split; "
                 "AUC is ROC-AUC of P(positive) and ACC the accuracy at the val-chosen threshold.")
    doc.heading("Machine")
    doc.bullets([f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                 f"{torch.get_num_threads()} torch threads", "training devices: " + ", ".join(sorted({e.info['device'] for e in entries})),
                 sharing_note([e for e in entries if e.kind == "model"]), speed_note([e for e in entries if e.kind == "model"])])

    doc.heading("Comparison (test set unless marked)")
    header, rows = comparison_rows(groups)
    doc.table(header, rows)
    if study.ensemble_on:
        weights = "; ".join(f"seed {e.seed}: " + ", ".join(f"{k} {v:.2f}" for k, v in e.info["weights"].items()) for e in entries if e.kind == "ensemble")
        doc.text(f"Ensemble weights: {weights}.")
    doc.heading("Winner per criterion (mean over seeds)")
    doc.table(["criterion", "best", "value"], winners(groups))
    doc.heading("Calibration on test (temperature fitted on val)")
    doc.table(["entry", "temperature", "ECE before", "ECE after", "Brier before", "Brier after", "threshold"], calibration_rows(groups))
    ood = ood_rows([e for e in entries if e.kind == "model"])
    if ood:
        doc.heading("Out-of-distribution check (share of images given no class)")
        doc.table(*ood)
        doc.text("Each run's check (evaluation/ood.py) accepts 99% of val; the sets that are not chest X-rays are made from what "
                 "installed packages ship (evaluation/ood_sets.py). Constant images count as refused: the upload path refuses them "
                 "before the model. Targets: test ≤ 3%, synthetic ≥ 99%, real images that are not chest radiographs ≥ 95%.")
    doc.figures(figs["overlay"], "ROC, precision-recall and reliability on test, all entries of the first seed")
    doc.heading("Per model (first seed)")
    doc.figures(figs["curves"], "training curves (train and val loss, accuracy, val ROC-AUC; dotted line: best epoch)")
    doc.figures(figs["confusion"], "confusion matrices on test at the val-chosen threshold")
    doc.figures(figs["grid"], "random val images with predictions")
    doc.figures(figs["gradcam"], "Grad-CAM on random val images: where each model looked for the class it predicted "
                "(the deepest layer with a map of at least 7x7; see README)")
    doc.heading("Reproduce")
    doc.text(f"`cxrlab compare --config {out / 'compare.yaml'}` reuses these runs, or trains them again where they are missing. "
             "Each run directory holds its config, history, weights and metrics:")
    doc.table(["entry", "seed", "run directories"], [[e.name, str(e.seed), ", ".join(f"`{r}`" for r in e.info["runs"])] for e in entries])
    return doc.write(out)


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
    if study.recipes:
        study_values["recipes"] = study.recipes
    path = out / "compare.yaml"
    atomic_write_text(path, yaml.safe_dump({"compare": study_values, **values}, sort_keys=False))
    return path


def compare(base: Config, study: Study | None = None, progress: bool | None = None, echo: Callable[[str], None] = print,
            workers: int | None = None) -> list[Entry]:
    """Train (or reuse) every model for every seed (``workers`` runs at a time; default: training/runner.py's rule); score models, TTA and ensemble; write the report."""
    study = (study or Study()).validate()
    base = base.validate()
    if base.task != "binary":
        return compare_multilabel(base, study, progress, echo, workers)
    out = Path(study.out)
    out.mkdir(parents=True, exist_ok=True)
    save_study(out, base, study)
    runs = train_runs(base, study, echo, progress, workers)
    data = task_data(base)
    recorded = runs[study.models[0], study.seeds[0]].read_json(runs[study.models[0], study.seeds[0]].summary)["data_md5"]
    if recorded != data.provenance["md5"]:
        raise RunDirError(f"the data file {data.provenance['file']} is not the one the runs in {out} were trained on")
    echo("\nscoring runs" + (f", {study.tta}-view TTA" if study.tta > 1 else "") + (", ensemble" if study.ensemble_on else ""))
    entries = model_entries(runs, data, study, base, echo)
    if study.ensemble_on:
        entries += ensemble_entries([e for e in entries if e.kind == "model"], base, study)
    entries.sort(key=lambda e: ({"model": 0, "tta": 1, "ensemble": 2}[e.kind], e.name, e.seed))
    write_csv(out / "comparison.csv", entries)
    md, page = write_report(out, base, study, entries, runs, data, echo)
    header, rows = comparison_rows(grouped(entries))
    keep = [0, 1, 5, 6, 11]  # entry, seeds, val acc, test acc, ROC-AUC
    echo("\n" + data_label(data.provenance))
    echo("\n".join("  ".join(f"{row[i]:<30}" for i in keep) for row in [header, *rows]))
    echo(f"\nwritten: {md}, {page}, {out / 'comparison.csv'}")
    return entries


# ---- multilabel: medmnist's metrics only -----------------------------------------------------------------


def compare_multilabel(base: Config, study: Study, progress, echo, workers: int | None = None) -> list[Entry]:
    if study.tta > 1 or isinstance(study.ensemble, list):
        raise ConfigError("ensemble weights and TTA rows are for the binary task; compare --task multilabel reports medmnist's AUC and ACC per model")
    out = Path(study.out)
    out.mkdir(parents=True, exist_ok=True)
    save_study(out, base, study)
    runs = train_runs(base, study, echo, progress, workers)
    entries = []
    for (name, seed), run in runs.items():
        summary = run.read_json(run.summary)
        info = {k: summary[k] for k in ("parameters", "model_size_mb", "best_epoch", "seconds_per_epoch", "train_seconds", "device")}
        entries.append(Entry(name, "model", seed, run.read_json(run.metrics("val")), run.read_json(run.metrics("test")), {}, {**info, "runs": [str(run.path)]}))
    label = runs[study.models[0], study.seeds[0]].read_json(runs[study.models[0], study.seeds[0]].summary)["data_label"]
    doc = Document("cxrlab model comparison: all 14 labels", warning=label if "PHANTOM" in label else None)
    doc.text(f"Data: {label}. Metrics are medmnist's Evaluator AUC and ACC (mean over seeds ± sd).")
    rows = [[name, str(len(g)), mean_sd(values(g, "auc", "val")), mean_sd(values(g, "auc", "test")), mean_sd(values(g, "acc", "test")),
             mean_sd(values(g, "seconds_per_epoch", "info"), 1)] for name, g in grouped(entries).items()]
    doc.table(["model", "seeds", "val AUC", "test AUC", "test ACC", "s/epoch"], rows)
    doc.table(["entry", "seed", "run"], [[e.name, str(e.seed), f"`{e.info['runs'][0]}`"] for e in entries])
    md, page = doc.write(out)
    echo("\n".join("  ".join(f"{c:<20}" for c in r) for r in rows))
    echo(f"\nwritten: {md}, {page}")
    return entries
