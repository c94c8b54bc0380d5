"""The multi-label task (ChestMNIST's 14 labels), scored with medmnist's own Evaluator so that numbers compare with published ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from medmnist import Evaluator

from cxrlab.evaluation.metrics import roc_auc


def multilabel_metrics(
    targets: np.ndarray, probs: np.ndarray, data_file: str | Path, size: int, split: str, labels: list[str], flag: str = "chestmnist"
) -> dict:
    """medmnist's AUC (mean of per-label ROC-AUC) and ACC (mean per-label accuracy at 0.5), plus per-label AUC.

    The Evaluator reads the split's labels from the same file; a label without both classes in the split
    makes its AUC undefined, and then the mean AUC is NaN, as medmnist's definition has no value there.
    """
    evaluator = Evaluator(flag, split, size=size, root=str(Path(data_file).parent))
    if not np.array_equal(evaluator.labels, targets):
        raise ValueError(f"labels given for {split} are not the file's {split}_labels")
    per_label = {f"auc_{name}": roc_auc(targets[:, i], probs[:, i]) for i, name in enumerate(labels)}
    try:
        auc, acc = evaluator.evaluate(probs)
    except ValueError:  # sklearn: only one class present for some label
        auc = float("nan")
        acc = float(((probs >= 0.5) == targets).mean())
    return {"auc": float(auc), "acc": float(acc), **per_label, "n": len(targets), "threshold": 0.5}


def label_table(columns: dict[str, dict], positives: dict[str, tuple[int, ...]], labels: list[str]) -> str:
    """Per-label AUC per split, with the number of positive images, then medmnist's AUC and ACC."""
    names = list(columns)
    lines = [f"{'label':<20}" + "".join(f"{'n+ ' + n:>12}{'AUC ' + n:>12}" for n in names)]
    for i, label in enumerate(labels):
        cells = "".join(f"{positives[n][i]:>12,}{columns[n][f'auc_{label}']:>12.3f}" for n in names)
        lines.append(f"{label:<20}{cells}")
    lines.append(f"{'AUC (medmnist)':<20}" + "".join(f"{'':>12}{columns[n]['auc']:>12.3f}" for n in names))
    lines.append(f"{'ACC (medmnist)':<20}" + "".join(f"{'':>12}{columns[n]['acc']:>12.3f}" for n in names))
    return "\n".join(lines)
