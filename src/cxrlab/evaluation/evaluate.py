"""Evaluating a run's best checkpoint: operating point and temperature chosen on its evidence (val, or a held-out
fold and val), applied unchanged to test; metrics, plots, summary."""

from __future__ import annotations

import platform
import time

import numpy as np
import torch

import cxrlab
from cxrlab.config import POINT_OPTIONS, Config
from cxrlab.console import logger
from cxrlab.core.checkpoint import TrainingState, load_weights
from cxrlab.core.runs import RunDir
from cxrlab.data.task import TaskData, data_label, fold_view, task_data
from cxrlab.errors import ConfigError, RunDirError
from cxrlab.evaluation import plots
from cxrlab.evaluation.inference import load_trained, predict_probs
from cxrlab.evaluation.metrics import POINT_KEYS, apply_temperature
from cxrlab.evaluation.multilabel import label_table, multilabel_metrics
from cxrlab.evaluation.operating_point import OperatingPoint
from cxrlab.evaluation.predict import answer_names
from cxrlab.evaluation.scoring import choose_on_evidence, negative_class, positive_view, score_probs
from cxrlab.files import atomic_write_json
from cxrlab.models.registry import count_parameters, model_from_config

log = logger(__name__)

GRID_IMAGES = 10


def metrics_table(columns: dict[str, dict]) -> str:
    """A readable table: one row per metric, one column per split, 'value [95% CI]'."""
    names = list(columns)
    lines = [f"{'metric':<22}" + "".join(f"{n:>26}" for n in names)]
    for key in POINT_KEYS:
        cells = []
        for m in columns.values():
            ci = f" [{m[f'{key}_ci_low']:.3f}, {m[f'{key}_ci_high']:.3f}]" if f"{key}_ci_low" in m else ""
            cells.append(f"{m[key]:.3f}{ci}")
        lines.append(f"{key:<22}" + "".join(f"{c:>26}" for c in cells))
    for key in (
        "ece",
        "ece_calibrated",
        "brier",
        "brier_calibrated",
        "accuracy_05",
        "sensitivity_05",
        "specificity_05",
        "referred",
        "answered_accuracy",
        "answered_sensitivity",
        "answered_specificity",
    ):
        if all(key in m for m in columns.values()):
            lines.append(f"{key:<22}" + "".join(f"{m[key]:>26.3f}" for m in columns.values()))
    for key in ("tn", "fp", "fn", "tp", "n", "threshold"):
        lines.append(f"{key:<22}" + "".join(f"{m[key]:>26.4g}" if key == "threshold" else f"{m[key]:>26d}" for m in columns.values()))
    return "\n".join(lines)


def split_metrics(
    data: TaskData, split: str, cfg: Config, probs: np.ndarray, point: OperatingPoint | None, temperature: float = 1.0
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Metrics of one split from the model's probabilities (N, outputs); returns (metrics, targets, probs) as scored.
    Binary metrics (``point``: the run's operating point) include calibration before and after scaling by
    ``temperature``, the metrics at 0.5 and the refer band's."""
    targets = data.splits[split].targets.numpy()
    if data.task == "multilabel":
        return (
            multilabel_metrics(
                targets, probs, data.provenance["file"], data.size, split, data.classes, data.provenance.get("dataset", "chestmnist")
            ),
            targets,
            probs,
        )
    targets, positive_probs = positive_view(targets, probs[:, 0], data.classes, cfg.positive)
    return score_probs(targets, positive_probs, point, temperature, cfg.n_bootstrap, cfg.seed, cfg.prevalence), targets, positive_probs


def evidence_of(data: TaskData, cfg: Config, probs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, str]:
    """(targets, P(positive), name) of the images a run chooses its operating point on: its selection split, and with
    a held-out fold of train the official val as well. ``probs``: split -> the model's probabilities (N, outputs)."""
    names = ["val"] if "official_val" not in data.splits else ["val", "official_val"]
    pairs = [positive_view(data.splits[s].targets.numpy(), probs[s][:, 0], data.classes, cfg.positive) for s in names]
    name = "val" if len(names) == 1 else f"held-out fold {cfg.cv_fold} of {cfg.cv_folds} of train + val"
    return np.concatenate([t for t, _ in pairs]), np.concatenate([p for _, p in pairs]), name


def write_split_outputs(run: RunDir, split: str, metrics: dict, targets, probs, cfg: Config, data: TaskData) -> None:
    label = data_label(data.provenance)
    name = f"{cfg.model} — {split}"
    atomic_write_json(run.metrics(split), metrics)
    if data.task == "multilabel":
        plots.per_label_auc(metrics, data.classes, run.plots / f"label_auc_{split}.png", f"{name}: ROC-AUC per label", label)
        return
    plots.confusion_matrix(metrics, data.classes, cfg.positive, run.plots / f"confusion_{split}.png", f"{name}: confusion matrix", label)
    plots.roc(targets, probs, metrics, run.plots / f"roc_{split}.png", f"{name}: ROC", label)
    plots.reliability(
        {
            cfg.model: (targets, probs),
            f"{cfg.model}, T={metrics['temperature']:.2f}": (targets, apply_temperature(probs, metrics["temperature"])),
        },
        run.plots / f"reliability_{split}.png",
        f"{name}: reliability",
        label,
    )


def results_table(data: TaskData, columns: dict[str, dict]) -> str:
    if data.task == "multilabel":
        return label_table(columns, {split: data.splits[split].counts() for split in columns}, data.classes)
    return metrics_table(columns)


def finalize_run(
    run: RunDir,
    cfg: Config,
    data: TaskData,
    device,
    state: TrainingState,
    side_by_side: int = 1,
    search_trial: bool = False,
) -> dict:
    """Evaluate the best checkpoint on val and test; write metrics, summary and plots. Returns the summary.
    A sealed run (its ``data`` has no test split) scores val only; a search trial writes its val metrics, summary
    and training curves only."""
    model = model_from_config(cfg, initial_weights=False)
    load_weights(model, run.weights)
    model = model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    scored = ("val", "test") if "test" in data.splits else ("val",)
    probs = {s: predict_probs(model, data.splits[s].images, cfg, device) for s in (*scored, "official_val") if s in data.splits}
    point, threshold, temperature = None, 0.5, 1.0
    if data.task == "binary":
        targets, positive, evidence = evidence_of(data, cfg, probs)
        point, temperature = choose_on_evidence(cfg, targets, positive, evidence, keep_going=True)
        threshold = point.threshold
        atomic_write_json(run.operating_point, point.to_dict())
        if not point.has_band:  # said where the run is made, as predict, /model and the page say it
            log.info(f"no refer band: {point.band_error}; this run answers every image at its single threshold {threshold:.4g}")
    probs = {s: probs[s] for s in scored}
    results = {split: split_metrics(data, split, cfg, split_probs, point, temperature) for split, split_probs in probs.items()}
    for split, (metrics, targets, split_probs) in results.items():
        if search_trial:
            atomic_write_json(run.metrics(split), metrics)
        else:
            write_split_outputs(run, split, metrics, targets, split_probs, cfg, data)

    summary = run_summary(
        run, cfg, data, state, model, side_by_side, {"device": str(device), "threshold": threshold, "temperature": temperature}
    )
    if search_trial:
        summary["search_trial"] = "scored on val only; test never loaded"
    else:
        if cfg.sealed:
            summary["sealed"] = "test never loaded: a study scores it once, after its choices are written down"
        if data.task == "binary":
            from cxrlab.evaluation.ood import fit_run_check

            summary["ood"] = fit_run_check(model, cfg, data, device, run.path)
    atomic_write_json(run.summary, summary)

    label = summary["data_label"]
    plots.training_curves(state.history, run.plots / "curves.png", f"{cfg.model}: training curves", label, state.best_epoch)
    if data.task == "binary" and not search_trial:
        _, val_targets, val_positive = results["val"]
        val_grid(run, cfg, data, val_targets, val_positive, point, label)
        log.info(f"\n{cfg.model}, best epoch {state.best_epoch} by val {cfg.select_metric}; positive class {cfg.positive}; {label}")
    else:
        log.info(f"\n{cfg.model}, multilabel, best epoch {state.best_epoch} by val {cfg.select_metric}; {label}")
    log.info(results_table(data, {split: r[0] for split, r in results.items()}))
    return summary


def run_summary(run: RunDir, cfg: Config, data: TaskData, state: TrainingState, model, side_by_side: int, chosen: dict) -> dict:
    """summary.json: what was trained, how it was chosen (``chosen``: device, threshold, temperature), on which data
    and machine."""
    history, train_seconds = state.history, state.train_seconds
    return {
        "model": cfg.model,
        "task": data.task,
        "classes": data.classes,
        "positive_class": cfg.positive if data.task == "binary" else None,
        "threshold": chosen["threshold"],
        "threshold_rule": cfg.threshold_rule,
        "temperature": chosen["temperature"],
        "select_metric": cfg.select_metric,
        "best_epoch": state.best_epoch,
        "best_val_score": state.best_score,
        "epochs_run": len(history),
        "early_stopped": state.done and len(history) < cfg.total_epochs,
        "parameters": count_parameters(model),
        "model_size_mb": run.weights.stat().st_size / 2**20,
        "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds / max(len(history), 1),
        "device": chosen["device"],
        "world_size": state.world_size,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "threads": torch.get_num_threads(),
        "side_by_side": side_by_side,  # runs training on the machine at once, this one included
        "data_kind": data.provenance["kind"],
        "data_label": data_label(data.provenance),
        "data_md5": data.provenance["md5"],
        "size": data.size,
        "torch": torch.__version__,
        "cxrlab": cxrlab.__version__,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def val_grid(
    run: RunDir, cfg: Config, data: TaskData, targets: np.ndarray, positive: np.ndarray, point: OperatingPoint, label: str
) -> None:
    """plots/val_grid.png: random val images (fixed by the seed) with truth, P(positive) and the answer given (a class,
    or refer), as predict answers by the run's operating point."""
    pick = np.random.default_rng(cfg.seed).choice(len(targets), size=min(GRID_IMAGES, len(targets)), replace=False)
    negative = negative_class(data.classes, cfg.positive)
    plots.prediction_grid(
        data.splits["val"].images.numpy()[pick],
        [cfg.positive if t == 1 else negative for t in targets[pick]],
        answer_names(point, positive[pick], data.classes, cfg.positive, cfg.decision),
        positive[pick],
        run.plots / "val_grid.png",
        f"{cfg.model}: random val images (P = P({cfg.positive}))",
        label,
    )


def evaluate_run(run_path, split: str = "test", device: str | None = None) -> dict:
    """Recompute a finished run's metrics on one split with its saved threshold; writes metrics and plots."""
    trained = load_trained(run_path, device)
    cfg, run = trained.cfg, trained.run
    if cfg.sealed and split == "test":
        raise RunDirError(
            f"{run.path} is sealed (a study's run): its test is scored for the study, once, by `cxrlab score STUDY`; "
            "evaluate it on val (--split val)"
        )
    folds = cfg.cv_folds and split == "val"  # a cross-validation run's val is its held-out fold of train
    data = task_data(cfg, splits=("train", split) if folds else (split,))
    if folds:
        data = fold_view(data, cfg.cv_folds, cfg.cv_fold)
    run.check_data(data.provenance)
    metrics, targets, probs = split_metrics(data, split, cfg, trained.probs(data.splits[split].images), trained.point, trained.temperature)
    write_split_outputs(run, split, metrics, targets, probs, cfg, data)
    what = f"positive class {cfg.positive}; {trained.point.describe()}" if data.task == "binary" else "multilabel"
    log.info(f"{cfg.model} on {split}; {what}; {data_label(data.provenance)}")
    log.info(results_table(data, {split: metrics}))
    return metrics


def fit_ood(run_path) -> dict:
    """Fit the out-of-distribution check for a finished run (one trained before the check existed, or again):
    from its weights and its data, no retraining; the summary records the measurements."""
    from cxrlab.evaluation.ood import fit_run_check

    trained = load_trained(run_path, "cpu")
    cfg, run = trained.cfg, trained.run
    if cfg.task != "binary":
        raise RunDirError("the out-of-distribution check is fitted for binary-task runs")
    data = task_data(cfg, splits=("train", "val") if cfg.sealed else ("train", "val", "test"))  # a sealed run never loads test
    if cfg.cv_folds:
        data = fold_view(data, cfg.cv_folds, cfg.cv_fold)
    run.check_data(data.provenance)
    report = fit_run_check(trained.model, cfg, data, trained.device, run.path)
    summary = run.read_json(run.summary)
    summary["ood"] = report
    atomic_write_json(run.summary, summary)
    return report


def refit_operating_point(run_path, options: dict | None = None) -> OperatingPoint:
    """Choose a finished run's operating point again, on its own evidence, with ``options`` (POINT_OPTIONS) over its
    config: for a run trained before operating points, or other targets. Writes operating_point.json, and the config
    and summary with the new rule; metrics files keep their numbers until ``cxrlab evaluate`` recomputes them. A
    target the evidence cannot show is refused, naming the best reachable value."""
    from dataclasses import replace

    unknown = sorted(set(options or {}) - set(POINT_OPTIONS))
    if unknown:
        raise ConfigError(f"an operating point takes {', '.join(POINT_OPTIONS)}; not {', '.join(unknown)}")
    trained = load_trained(run_path, "cpu")
    run = trained.run
    if trained.cfg.task != "binary":
        raise RunDirError("operating points are for binary-task runs; multilabel runs use 0.5 per label")
    cfg = replace(trained.cfg, **(options or {})).validate()
    data = task_data(cfg, splits=("train", "val") if cfg.cv_folds else ("val",))
    if cfg.cv_folds:
        data = fold_view(data, cfg.cv_folds, cfg.cv_fold)
    run.check_data(data.provenance)
    probs = {s: trained.probs(data.splits[s].images) for s in ("val", "official_val") if s in data.splits}
    targets, positive, evidence = evidence_of(data, cfg, probs)
    point, temperature = choose_on_evidence(cfg, targets, positive, evidence)
    atomic_write_json(run.operating_point, point.to_dict())
    summary = run.read_json(run.summary)
    summary.update(threshold=point.threshold, threshold_rule=cfg.threshold_rule, temperature=temperature)
    atomic_write_json(run.summary, summary)
    cfg.save(run.config)
    log.info(f"{run.path}: {point.describe()}")
    return point
