"""Evaluating a run's best checkpoint: threshold chosen on val, applied unchanged to test; metrics, plots, summary."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

import numpy as np
import torch

import cxrlab
from cxrlab.config import Config
from cxrlab.data.task import TaskData, data_label, fold_view, task_data
from cxrlab.errors import RunDirError
from cxrlab.evaluation import plots
from cxrlab.evaluation.inference import load_trained, predict_probs
from cxrlab.evaluation.metrics import POINT_KEYS, apply_temperature, evaluate_probs, fit_temperature
from cxrlab.evaluation.scoring import choose_threshold, positive_view
from cxrlab.evaluation.multilabel import label_table, multilabel_metrics
from cxrlab.files import atomic_write_json
from cxrlab.models.registry import count_parameters, model_from_config
from cxrlab.core.runs import RunDir
from cxrlab.core.checkpoint import TrainingState, load_weights

GRID_IMAGES = 10


def metrics_table(columns: dict[str, dict]) -> str:
    """A readable table: one row per metric, one column per split, 'value [95% CI]'."""
    names = list(columns)
    lines = [f"{'metric':<18}" + "".join(f"{n:>26}" for n in names)]
    for key in POINT_KEYS:
        cells = []
        for m in columns.values():
            ci = f" [{m[f'{key}_ci_low']:.3f}, {m[f'{key}_ci_high']:.3f}]" if f"{key}_ci_low" in m else ""
            cells.append(f"{m[key]:.3f}{ci}")
        lines.append(f"{key:<18}" + "".join(f"{c:>26}" for c in cells))
    for key in ("ece", "ece_calibrated", "brier", "brier_calibrated"):
        if all(key in m for m in columns.values()):
            lines.append(f"{key:<18}" + "".join(f"{m[key]:>26.3f}" for m in columns.values()))
    for key in ("tn", "fp", "fn", "tp", "n", "threshold"):
        lines.append(f"{key:<18}" + "".join(f"{m[key]:>26.4g}" if key == "threshold" else f"{m[key]:>26d}" for m in columns.values()))
    return "\n".join(lines)


def split_metrics(data: TaskData, split: str, cfg: Config, probs: np.ndarray, threshold: float, temperature: float = 1.0) -> tuple[dict, np.ndarray, np.ndarray]:
    """Metrics of one split from the model's probabilities (N, outputs); returns (metrics, targets, probs) as scored.
    Binary metrics include calibration (ECE, Brier) before and after scaling by ``temperature``."""
    targets = data.splits[split].targets.numpy()
    if data.task == "multilabel":
        return multilabel_metrics(targets, probs, data.provenance["file"], data.size, split, data.classes,
                                  data.provenance.get("dataset", "chestmnist")), targets, probs
    targets, positive_probs = positive_view(targets, probs[:, 0], data.classes, cfg.positive)
    return evaluate_probs(targets, positive_probs, threshold, cfg.n_bootstrap, cfg.seed, temperature), targets, positive_probs


def write_split_outputs(run: RunDir, split: str, metrics: dict, targets, probs, cfg: Config, data: TaskData) -> None:
    label = data_label(data.provenance)
    name = f"{cfg.model} — {split}"
    atomic_write_json(run.metrics(split), metrics)
    if data.task == "multilabel":
        plots.per_label_auc(metrics, data.classes, run.plots / f"label_auc_{split}.png", f"{name}: ROC-AUC per label", label)
        return
    plots.confusion_matrix(metrics, data.classes, cfg.positive, run.plots / f"confusion_{split}.png", f"{name}: confusion matrix", label)
    plots.roc(targets, probs, metrics, run.plots / f"roc_{split}.png", f"{name}: ROC", label)
    plots.reliability({cfg.model: (targets, probs), f"{cfg.model}, T={metrics['temperature']:.2f}": (targets, apply_temperature(probs, metrics["temperature"]))},
                      run.plots / f"reliability_{split}.png", f"{name}: reliability", label)


def results_table(data: TaskData, columns: dict[str, dict]) -> str:
    if data.task == "multilabel":
        return label_table(columns, {split: data.splits[split].counts() for split in columns}, data.classes)
    return metrics_table(columns)


def finalize_run(run: RunDir, cfg: Config, data: TaskData, device, state: TrainingState, side_by_side: int = 1,
                 echo: Callable[[str], None] = print, search_trial: bool = False) -> dict:
    """Evaluate the best checkpoint on val and test; write metrics, summary and plots. Returns the summary.
    A search trial (its ``data`` has no test split) writes its val metrics, summary and training curves only."""
    model = model_from_config(cfg, initial_weights=False)
    load_weights(model, run.weights)
    model = model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    val_probs = predict_probs(model, data.splits["val"].images, cfg, device)
    threshold, temperature = 0.5, 1.0
    if data.task == "binary":
        val_targets, val_positive = positive_view(data.splits["val"].targets.numpy(), val_probs[:, 0], data.classes, cfg.positive)
        threshold = choose_threshold(cfg, val_targets, val_positive)
        temperature = fit_temperature(val_targets, val_positive)
    probs = {"val": val_probs}
    if not search_trial:
        probs["test"] = predict_probs(model, data.splits["test"].images, cfg, device)
    results = {split: split_metrics(data, split, cfg, split_probs, threshold, temperature) for split, split_probs in probs.items()}
    for split, (metrics, targets, split_probs) in results.items():
        if search_trial:
            atomic_write_json(run.metrics(split), metrics)
        else:
            write_split_outputs(run, split, metrics, targets, split_probs, cfg, data)

    label = data_label(data.provenance)
    history, train_seconds = state.history, state.train_seconds
    summary = {
        "model": cfg.model,
        "task": data.task,
        "classes": data.classes,
        "positive_class": cfg.positive if data.task == "binary" else None,
        "threshold": threshold,
        "threshold_rule": cfg.threshold_rule,
        "temperature": temperature,
        "select_metric": cfg.select_metric,
        "best_epoch": state.best_epoch,
        "best_val_score": state.best_score,
        "epochs_run": len(history),
        "early_stopped": state.done and len(history) < cfg.total_epochs,
        "parameters": count_parameters(model),
        "model_size_mb": run.weights.stat().st_size / 2**20,
        "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds / max(len(history), 1),
        "device": str(device),
        "world_size": state.world_size,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "threads": torch.get_num_threads(),
        "side_by_side": side_by_side,  # runs training on the machine at once, this one included
        "data_kind": data.provenance["kind"],
        "data_label": label,
        "data_md5": data.provenance["md5"],
        "size": data.size,
        "torch": torch.__version__,
        "cxrlab": cxrlab.__version__,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if search_trial:
        summary["search_trial"] = "scored on val only; test never loaded"
    elif data.task == "binary":
        from cxrlab.evaluation.ood import fit_run_check

        summary["ood"] = fit_run_check(model, cfg, data, device, run.path, echo)
    atomic_write_json(run.summary, summary)

    plots.training_curves(history, run.plots / "curves.png", f"{cfg.model}: training curves", label, state.best_epoch)
    if data.task == "binary" and not search_trial:
        _, val_targets, val_positive = results["val"]
        pick = np.random.default_rng(cfg.seed).choice(len(val_targets), size=min(GRID_IMAGES, len(val_targets)), replace=False)
        plots.prediction_grid(
            data.splits["val"].images.numpy()[pick], val_targets[pick], val_positive[pick], threshold, data.classes, cfg.positive,
            run.plots / "val_grid.png", f"{cfg.model}: random val images (P = P({cfg.positive}))", label,
        )
        echo(f"\n{cfg.model}, best epoch {state.best_epoch} by val {cfg.select_metric}; positive class {cfg.positive}; {label}")
    else:
        echo(f"\n{cfg.model}, multilabel, best epoch {state.best_epoch} by val {cfg.select_metric}; {label}")
    echo(results_table(data, {split: r[0] for split, r in results.items()}))
    return summary


def evaluate_run(run_path, split: str = "test", device: str | None = None, echo: Callable[[str], None] = print) -> dict:
    """Recompute a finished run's metrics on one split with its saved threshold; writes metrics and plots."""
    trained = load_trained(run_path, device)
    cfg, run = trained.cfg, trained.run
    folds = cfg.cv_folds and split == "val"  # a cross-validation run's val is its held-out fold of train
    data = task_data(cfg, splits=("train", split) if folds else (split,))
    if folds:
        data = fold_view(data, cfg.cv_folds, cfg.cv_fold)
    recorded = run.read_json(run.data)
    if recorded["md5"] != data.provenance["md5"]:
        raise RunDirError(
            f"the data file {data.provenance['file']} is not the one {run.path} was trained on "
            f"(MD5 {data.provenance['md5']}, run recorded {recorded['md5']})"
        )
    metrics, targets, probs = split_metrics(data, split, cfg, trained.probs(data.splits[split].images), trained.threshold, trained.temperature)
    write_split_outputs(run, split, metrics, targets, probs, cfg, data)
    what = f"positive class {cfg.positive}; threshold {trained.threshold:.4g}" if data.task == "binary" else "multilabel"
    echo(f"{cfg.model} on {split}; {what}; {data_label(data.provenance)}")
    echo(results_table(data, {split: metrics}))
    return metrics


def fit_ood(run_path, echo: Callable[[str], None] = print) -> dict:
    """Fit the out-of-distribution check for a finished run (one trained before the check existed, or again):
    from its weights and its data, no retraining; the summary records the measurements."""
    from cxrlab.evaluation.ood import fit_run_check

    trained = load_trained(run_path, "cpu")
    cfg, run = trained.cfg, trained.run
    if cfg.task != "binary":
        raise RunDirError("the out-of-distribution check is fitted for binary-task runs")
    data = task_data(cfg)
    if cfg.cv_folds:
        data = fold_view(data, cfg.cv_folds, cfg.cv_fold)
    if run.read_json(run.data)["md5"] != data.provenance["md5"]:
        raise RunDirError(f"the data file {data.provenance['file']} is not the one {run.path} was trained on")
    report = fit_run_check(trained.model, cfg, data, trained.device, run.path, echo)
    summary = run.read_json(run.summary)
    summary["ood"] = report
    atomic_write_json(run.summary, summary)
    return report
