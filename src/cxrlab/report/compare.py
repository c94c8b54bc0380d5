"""The main experiment: train several models under one protocol and put their test results side by side."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from cxrlab.config import MODEL_NAMES, Config
from cxrlab.errors import RunDirError
from cxrlab.files import atomic_write_text
from cxrlab.runs import RunDir
from cxrlab.training.loop import resolve, resume_training, train

COLUMNS = (
    ("model", "model"),
    ("parameters", "params"),
    ("model_size_mb", "size MB"),
    ("best_epoch", "best epoch"),
    ("seconds_per_epoch", "s/epoch"),
    ("val_accuracy", "val acc"),
    ("accuracy", "test acc"),
    ("balanced_accuracy", "test bal acc"),
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("f1", "F1"),
    ("roc_auc", "ROC-AUC [95% CI]"),
)


def run_model(cfg: Config, echo: Callable[[str], None], progress: bool | None) -> RunDir:
    """Train cfg's run, reuse it when already finished with the same config, or resume it when interrupted."""
    run = RunDir(cfg.out)
    if not run.config.exists():
        return train(cfg, progress=progress, echo=echo)
    existing = run.load_config()
    if existing.to_dict() != cfg.to_dict():
        changed = sorted(k for k, v in cfg.to_dict().items() if existing.to_dict().get(k) != v)
        raise RunDirError(f"{run.path} holds a run with a different config ({', '.join(changed)}); choose another --out")
    if run.summary.is_file():
        echo(f"reusing finished run {run.path}")
        return run
    return resume_training(run.path, progress=progress, echo=echo)


MULTILABEL_COLUMNS = (
    ("model", "model"),
    ("parameters", "params"),
    ("model_size_mb", "size MB"),
    ("best_epoch", "best epoch"),
    ("seconds_per_epoch", "s/epoch"),
    ("val_auc", "val AUC"),
    ("auc", "test AUC"),
    ("acc", "test ACC"),
)


def row_for(run: RunDir) -> dict:
    summary = run.require_finished()
    test = run.read_json(run.metrics("test"))
    val = run.read_json(run.metrics("val"))
    extra = {"val_auc": val["auc"]} if summary.get("task") == "multilabel" else {"val_accuracy": val["accuracy"]}
    return {**test, **summary, **extra, "run": str(run.path)}


def format_cell(key: str, row: dict) -> str:
    value = row[key]
    if key == "roc_auc":
        return f"{value:.3f} [{row['roc_auc_ci_low']:.3f}, {row['roc_auc_ci_high']:.3f}]"
    if key == "parameters":
        return f"{value / 1e6:.2f}M"
    if isinstance(value, float):
        return f"{value:.3f}" if key not in ("model_size_mb", "seconds_per_epoch") else f"{value:.1f}"
    return str(value)


def markdown_table(rows: list[dict], columns=COLUMNS) -> str:
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_cell(key, row) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


def compare(base: Config, models: list[str] = list(MODEL_NAMES), out: str | Path = "runs/compare", progress: bool | None = None, echo: Callable[[str], None] = print) -> list[dict]:
    """Train (or reuse) one run per model in ``out/<model>``; write comparison.md and comparison.csv there."""
    out = Path(out)
    rows = []
    for name in models:
        cfg = resolve(replace(base, model=name, out=str(out / name)))
        echo(f"\n=== {name} ===")
        rows.append(row_for(run_model(cfg, echo, progress)))
    labels = {row["data_label"] for row in rows}
    if len({row["data_md5"] for row in rows}) > 1:
        raise RunDirError("these runs were trained on different data files; they cannot share one table: " + ", ".join(r["run"] for r in rows))
    label = labels.pop()
    multilabel = base.task == "multilabel"
    columns = MULTILABEL_COLUMNS if multilabel else COLUMNS
    task_text = (
        "all 14 labels, medmnist's AUC and ACC" if multilabel
        else f"positive class: {rows[0]['positive_class']}, threshold rule: {rows[0]['threshold_rule']}"
    )
    header = (
        f"# Model comparison\n\nData: {label}\n\n"
        f"Protocol: trained on train, best epoch and threshold chosen on val, reported on test ({task_text}).\n\n"
    )
    table = markdown_table(rows, columns)
    atomic_write_text(out / "comparison.md", header + table + "\n\nRuns: " + ", ".join(r["run"] for r in rows) + "\n")
    buffer = io.StringIO()
    extra = [] if multilabel else ["roc_auc_ci_low", "roc_auc_ci_high"]
    writer = csv.DictWriter(buffer, fieldnames=[k for k, _ in columns] + extra + ["run"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "comparison.csv", buffer.getvalue())
    echo(f"\n{header}{table}\n\nwritten: {out / 'comparison.md'}, {out / 'comparison.csv'}")
    return rows
