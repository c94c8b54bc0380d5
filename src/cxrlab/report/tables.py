"""The tables of a study report: metric columns, mean +- sd over seeds, winners, calibration, the OOD check,
speed, and the CSV; plain functions of the entries."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from cxrlab.evaluation.operating_point import BAND_KEYS
from cxrlab.files import atomic_write_text
from cxrlab.report.study import Entry

METRIC_COLUMNS = (  # (key, title, source): source 'test', 'val' or 'info'
    ("train_accuracy", "train acc", "info"),
    ("accuracy", "val acc", "val"),
    ("accuracy", "test acc", "test"),
    ("accuracy_05", "test acc at 0.5", "test"),
    ("balanced_accuracy", "bal acc", "test"),
    ("sensitivity", "sensitivity", "test"),
    ("specificity", "specificity", "test"),
    ("precision", "PPV", "test"),
    ("npv", "NPV", "test"),
    ("f1", "F1", "test"),
    ("roc_auc", "ROC-AUC", "test"),
    ("referred", "referred", "test"),
    ("answered_accuracy", "answered acc", "test"),
)
INTERVAL_KEYS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "npv", "f1", "roc_auc")  # resampled on test


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


def sharing_note(singles: list[Entry]) -> str:
    """How the training timings were taken: s/epoch of runs that shared the machine is not one run's speed alone."""
    ways = sorted({(e.info.get("side_by_side"), e.info.get("threads")) for e in singles}, key=str)
    text = "; ".join(
        "not recorded (runs from before cxrlab recorded it)"
        if n is None
        else f"{n} run{'s' * (n != 1)} at a time, {t} thread{'s' * (t != 1)} each"
        for n, t in ways
    )
    return (
        f"training timings (s/epoch, train s) were measured with {text}: runs side by side each take longer per epoch, "
        "and the study finishes sooner (benchmarks/README.md)"
    )


def speed_note(singles: list[Entry]) -> str:
    first = singles[0].info
    return (
        f"inference columns: {first['backend']}, the backend predict and serve deploy, measured in this process after training "
        f"on the first seed's run: median batch-1 latency over test images, and throughput at batch {first['batch']}; "
        "INT8 only where `cxrlab export` shipped an INT8 model"
    )


def comparison_rows(groups: dict[str, list[Entry]], intervals: dict[str, dict] | None = None) -> tuple[list[str], list[list[str]]]:
    """One row per entry: mean ± sd over seeds, and for test metrics in ``intervals`` (entry -> key -> Interval)
    the 95% interval over seeds and test resampling in brackets."""
    int8 = any("int8_ms_per_image" in e.info for g in groups.values() for e in g)
    header = (
        ["entry", "seeds", "params", "size MB"]
        + [t for _, t, _ in METRIC_COLUMNS]
        + ["epochs to best", "s/epoch", "train s (total)", "device", "ms/image (ORT fp32, batch 1)", "images/s (ORT fp32, batched)"]
        + (["ms/image (ORT INT8, batch 1)", "images/s (ORT INT8, batched)"] if int8 else [])
    )
    rows = []
    for name, group in groups.items():
        first = group[0]
        params = first.info["parameters"]
        row = [name, str(len(group)), f"{params / 1e6:.2f}M", f"{first.info['model_size_mb']:.1f}"]
        row += [_cell(group, key, source, (intervals or {}).get(name, {})) for key, _, source in METRIC_COLUMNS]
        row.append(mean_sd(values(group, "best_epoch", "info"), 1))
        row.append(mean_sd(values(group, "seconds_per_epoch", "info"), 1))
        row.append(mean_sd(values(group, "train_seconds", "info"), 0))
        row.append(first.info["device"])
        for prefix in ("", "int8_") if int8 else ("",):
            row.append(f"{first.info[prefix + 'ms_per_image']:.2f}" if prefix + "ms_per_image" in first.info else "—")
            row.append(f"{first.info[prefix + 'images_per_s']:.0f}" if prefix + "images_per_s" in first.info else "—")
        rows.append(row)
    return header, rows


def _cell(group: list[Entry], key: str, source: str, intervals: dict) -> str:
    if key == "referred":
        return mean_sd(100 * values(group, key, source), 1) + " %" if key in group[0].test else "—"
    text = mean_sd(values(group, key, source))
    shown = source == "test" and key in intervals and not np.isnan(intervals[key].low)
    return text + (f" [{intervals[key].low:.3f}, {intervals[key].high:.3f}]" if shown else "")


# Criteria that need no test resampling to rank; differences in test metrics are judged by the paired comparisons.
WINNER_CRITERIA = (  # (title, key, source, higher is better)
    ("fewest parameters", "parameters", "info", False),
    ("fastest inference (onnxruntime fp32 ms/image, batch 1)", "ms_per_image", "info", False),
    ("shortest training (s)", "train_seconds", "info", False),
)


def winners(groups: dict[str, list[Entry]]) -> list[list[str]]:
    """The best entry per criterion by its mean over seeds; ties and entries without the value are named."""
    rows = []
    for title, key, source, higher in WINNER_CRITERIA:
        means = {
            name: np.nanmean(values(g, key, source)) if not np.isnan(values(g, key, source)).all() else np.nan for name, g in groups.items()
        }
        means = {k: v for k, v in means.items() if not np.isnan(v)}
        if not means:
            continue
        best = max(means.values()) if higher else min(means.values())
        names = [k for k, v in means.items() if v == best]
        rows.append([title, " = ".join(names), f"{best / 1e6:.2f}M" if key == "parameters" else f"{best:.4g}"])
    return rows


def calibration_rows(groups: dict[str, list[Entry]]) -> list[list[str]]:
    return [
        [
            name,
            mean_sd(values(g, "temperature", "test"), 2),
            mean_sd(values(g, "ece", "test")),
            mean_sd(values(g, "ece_calibrated", "test")),
            mean_sd(values(g, "brier", "test")),
            mean_sd(values(g, "brier_calibrated", "test")),
            mean_sd(values(g, "threshold", "test")),
        ]
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
        rows.append(
            [name, str(len(group))]
            + [mean_sd(np.array([100 * e.info["ood_flagged"].get(k, np.nan) for e in group]), 1) + " %" for k in sets]
        )
    missing = sorted({e.name for e in singles} - {e.name for e in measured})
    if missing:
        rows += [[name, "0"] + ["no check (cxrlab ood RUN)"] * len(sets) for name in missing]
    return ["model", "runs", *sets], rows


SPEED_KEYS = ("ms_per_image", "images_per_s", "int8_ms_per_image", "int8_images_per_s")  # onnxruntime fp32, then the shipped INT8 model


CSV_KEYS = (
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "npv",
    "f1",
    "roc_auc",
    "roc_auc_ci_low",
    "roc_auc_ci_high",
    "pr_auc",
    "ece",
    "ece_calibrated",
    "brier",
    "brier_calibrated",
    "temperature",
    "threshold",
    "accuracy_05",
    "balanced_accuracy_05",
    "sensitivity_05",
    "specificity_05",
    "rule_out",
    "rule_in",
    "referred",
    "answered_accuracy",
    "answered_sensitivity",
    "answered_specificity",
    *BAND_KEYS,
)


def write_rows(path: Path, rows: list[dict]) -> None:
    """Rows of dicts (the first row's keys are the header) to a CSV file, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def write_csv(path: Path, entries: list[Entry]) -> None:
    buffer = io.StringIO()
    fields = [
        "entry",
        "kind",
        "seed",
        "val_accuracy",
        "val_roc_auc",
        "evidence_roc_auc",
        *CSV_KEYS,
        "parameters",
        "train_seconds",
        *SPEED_KEYS,
        "weights",
        "runs",
    ]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for e in entries:
        writer.writerow(
            {
                "entry": e.name,
                "kind": e.kind,
                "seed": e.seed,
                "val_accuracy": e.val["accuracy"],
                "val_roc_auc": e.val["roc_auc"],
                "evidence_roc_auc": e.info.get("evidence_roc_auc"),
                **{k: e.test.get(k) for k in CSV_KEYS},
                **{k: e.info.get(k) for k in ("parameters", "train_seconds", *SPEED_KEYS)},
                "weights": " ".join(f"{k}={v:.2f}" for k, v in e.info.get("weights", {}).items()),
                "runs": " ".join(e.info["runs"]),
            }
        )
    atomic_write_text(path, buffer.getvalue())
