"""compare --task multilabel: the models on all 14 ChestMNIST labels, medmnist's AUC and ACC only."""

from __future__ import annotations

from pathlib import Path

from cxrlab.config import Config, Study
from cxrlab.console import logger
from cxrlab.errors import ConfigError
from cxrlab.report.document import Document
from cxrlab.report.study import Entry, save_study, train_runs, within
from cxrlab.report.tables import grouped, mean_sd, values
from cxrlab.training.shared import Shared

log = logger(__name__)


def compare_multilabel(base: Config, study: Study, progress, workers: int | None = None, shared: Shared | None = None) -> list[Entry]:
    if study.tta > 1 or isinstance(study.ensemble, list):
        raise ConfigError(
            "ensemble weights and TTA rows are for the binary task; compare --task multilabel reports medmnist's AUC and ACC per model"
        )
    out = Path(study.out)
    out.mkdir(parents=True, exist_ok=True)
    save_study(out, base, study)
    runs = train_runs(base, study, progress, workers, shared)
    entries = []
    for (name, seed), run in runs.items():
        summary = run.read_json(run.summary)
        info = {k: summary[k] for k in ("parameters", "model_size_mb", "best_epoch", "seconds_per_epoch", "train_seconds", "device")}
        entries.append(
            Entry(
                name,
                "model",
                seed,
                run.read_json(run.metrics("val")),
                run.read_json(run.metrics("test")),
                {},
                {**info, "runs": [within(run.path, study.out)]},
            )
        )
    label = runs[study.models[0], study.seeds[0]].read_json(runs[study.models[0], study.seeds[0]].summary)["data_label"]
    doc = Document("cxrlab model comparison: all 14 labels", warning=label if "PHANTOM" in label else None)
    doc.text(
        f"Data: {label}. Metrics are medmnist's Evaluator AUC and ACC (mean over seeds ± sd). Unsealed: each run scored its "
        "own test when it finished (0.5 per label, nothing chosen on it); only binary studies keep test sealed until scored."
    )
    rows = [
        [
            name,
            str(len(g)),
            mean_sd(values(g, "auc", "val")),
            mean_sd(values(g, "auc", "test")),
            mean_sd(values(g, "acc", "test")),
            mean_sd(values(g, "seconds_per_epoch", "info"), 1),
        ]
        for name, g in grouped(entries).items()
    ]
    doc.table(["model", "seeds", "val AUC", "test AUC", "test ACC", "s/epoch"], rows)
    doc.table(["entry", "seed", "run"], [[e.name, str(e.seed), f"`{e.info['runs'][0]}`"] for e in entries])
    md, page = doc.write(out)
    log.info("\n".join("  ".join(f"{c:<20}" for c in r) for r in rows))
    log.info(f"\nwritten: {md}, {page}")
    return entries
