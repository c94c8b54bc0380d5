"""How an entry holds up under acquisition-like corruptions (data/corruptions.py), on val, never test: ROC-AUC and
sensitivity and specificity at the entry's single threshold, per corruption and severity, and the share its
out-of-distribution check flags.

    DIR/robustness.csv   one row per corruption and severity (and the clean row)
    DIR/robustness.md    the table
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cxrlab.console import logger
from cxrlab.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from cxrlab.data.task import data_label, task_data
from cxrlab.evaluation.metrics import roc_auc
from cxrlab.evaluation.scoring import positive_probability, positive_view
from cxrlab.files import atomic_write_text
from cxrlab.report.site import judged
from cxrlab.report.tables import write_rows

log = logger(__name__)


def row(model, images: np.ndarray, targets: np.ndarray, corruption: str, severity: int, flag: bool) -> dict:
    """One cell; the check's flags only where ``flag`` (the clean row and severity 5: what the table shows)."""
    if flag:
        probs, flagged = judged(model, images)
    else:
        probs, flagged = positive_probability(model.probs(torch.from_numpy(images))[:, 0], model.classes, model.cfg.positive), None
    answered = probs >= model.point.threshold
    return {
        "corruption": corruption,
        "severity": severity,
        "roc_auc": roc_auc(targets, probs),
        "sensitivity": float(answered[targets == 1].mean()),
        "specificity": float((~answered[targets == 0]).mean()),
        "flagged": None if flagged is None else float(flagged.mean()),
    }


def robustness(model, out: Path | None = None, seed: int = 0) -> list[dict]:
    """Every corruption at every severity on the model's val split (the official val); written to ``out``."""
    data = task_data(model.cfg, splits=("val",))
    val = data.splits["val"]
    images = val.images.numpy()
    targets = positive_view(val.targets.numpy(), np.zeros(len(val)), model.classes, model.cfg.positive)[0]
    rows = [row(model, images, targets, "none", 0, flag=True)]
    for name in CORRUPTIONS:
        for severity in SEVERITIES:
            rows.append(row(model, corrupt(images, name, severity, seed), targets, name, severity, flag=severity == SEVERITIES[-1]))
        log.info(f"{name}: ROC-AUC " + ", ".join(f"{r['roc_auc']:.3f}" for r in rows[-len(SEVERITIES) :]))
    if out is not None:
        write_robustness(Path(out), rows, model.answered_by, data_label(data.provenance), model.point.threshold)
    return rows


def write_robustness(out: Path, rows: list[dict], what: str, label: str, threshold: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_rows(out / "robustness.csv", rows)
    clean = rows[0]
    lines = [
        "# Robustness to acquisition-like corruptions (val)",
        "",
        f"{what}; {label}. MedMNIST-C's corruption family and its PneumoniaMNIST severity table (Di Salvo, Doerrich & Ledig "
        "2024), applied at the model's size (MedMNIST-C defines them at 224 px: this is not its benchmark). Each cell: "
        f"ROC-AUC / sensitivity / specificity at the single threshold {threshold:.4g}; the last column the share the "
        f"out-of-distribution check flags at severity 5. Clean val: {clean['roc_auc']:.3f} / {clean['sensitivity']:.3f} / "
        f"{clean['specificity']:.3f}, flagged {clean['flagged']:.1%}.",
        "",
        "| corruption | " + " | ".join(f"severity {s}" for s in SEVERITIES) + " | flagged at 5 |",
        "|---|" + "---|" * (len(SEVERITIES) + 1),
    ]
    for name in CORRUPTIONS:
        mine = [r for r in rows if r["corruption"] == name]
        cells = [f"{r['roc_auc']:.3f} / {r['sensitivity']:.2f} / {r['specificity']:.2f}" for r in mine]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mine[-1]['flagged']:.1%} |")
    atomic_write_text(out / "robustness.md", "\n".join(lines) + "\n")
    log.info(f"written: {out / 'robustness.md'}, {out / 'robustness.csv'}")
