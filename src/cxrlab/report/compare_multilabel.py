"""compare --task multilabel: the models on all 14 ChestMNIST labels, medmnist's AUC and ACC only, sealed as the binary
study is: the runs never load test, choices.json records the runs (nothing is chosen on val but each run's best
epoch: medmnist's convention scores every label at 0.5), and test is scored once, by `cxrlab score OUT`."""

from __future__ import annotations

from pathlib import Path

from cxrlab.config import Config, Study
from cxrlab.console import logger
from cxrlab.core.runs import RunDir
from cxrlab.data.task import task_data
from cxrlab.errors import ConfigError
from cxrlab.evaluation.inference import load_trained
from cxrlab.evaluation.multilabel import multilabel_metrics
from cxrlab.report.choices import Seal, choices_record, entry_key
from cxrlab.report.document import Document
from cxrlab.report.study import Entry, save_study, train_runs, within
from cxrlab.report.tables import grouped, mean_sd, values
from cxrlab.training.shared import Shared

log = logger(__name__)

CONVENTION = "medmnist's Evaluator: AUC, and ACC at 0.5 per label; nothing chosen on val but each run's best epoch"


def compare_multilabel(
    base: Config, study: Study, progress, workers: int | None = None, shared: Shared | None = None, rescore: bool = False
) -> Path:
    """Train (or reuse) the runs, sealed, and write down the choices: every run by its weights' MD5."""
    if study.tta > 1 or isinstance(study.ensemble, list):
        raise ConfigError(
            "ensemble weights and TTA rows are for the binary task; compare --task multilabel reports medmnist's AUC and ACC per model"
        )
    out = Path(study.out)
    out.mkdir(parents=True, exist_ok=True)
    save_study(out, base, study)
    runs = train_runs(base, study, progress, workers, shared)
    first = runs[study.models[0], study.seeds[0]]
    records = {
        entry_key(name, seed): {"name": name, "kind": "model", "seed": seed, "runs": [run.path.name]} for (name, seed), run in runs.items()
    }
    data_md5 = first.read_json(first.summary)["data_md5"]
    choices = choices_record(out, runs.values(), data_md5, {"convention": CONVENTION}, None, records)  # no headline: runs answer alone
    Seal(out).write(choices, rescore)
    return out


def score_multilabel(out: Path, base: Config, study: Study, seal: Seal, choices: dict, digest: str) -> list[Entry]:
    """Test, once, for every run of the choices; the report."""
    data = task_data(base)
    test = data.splits["test"]
    log.info(f"\nscoring test once, by the choices written {choices['written']} (SHA-256 {digest})")
    entries = []
    for chosen in choices["entries"].values():
        run = RunDir(out / choices["runs"][chosen["runs"][0]]["path"])
        run.check_data(data.provenance)
        probs = load_trained(run.path).probs(test.images)
        metrics = multilabel_metrics(test.targets.numpy(), probs, data.provenance["file"], data.size, "test", data.classes, base.dataset)
        summary = run.read_json(run.summary)
        info = {k: summary[k] for k in ("parameters", "model_size_mb", "best_epoch", "seconds_per_epoch", "train_seconds", "device")}
        info["runs"] = [within(run.path, out)]
        entries.append(Entry(chosen["name"], "model", chosen["seed"], run.read_json(run.metrics("val")), metrics, {}, info))
    seal.mark_scored(digest)
    write_multilabel_report(out, entries, summary["data_label"], seal.describe())
    return entries


def write_multilabel_report(out: Path, entries: list[Entry], label: str, seal_line: str) -> None:
    doc = Document("cxrlab model comparison: all 14 labels", warning=label if "PHANTOM" in label else None)
    doc.text(
        f"Data: {label}. Metrics are medmnist's Evaluator AUC and ACC (mean over seeds ± sd), every label at 0.5 as medmnist "
        f"scores it; nothing was chosen on val but each run's best epoch; {seal_line}."
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
    log.info(f"\n{seal_line}\nwritten: {md}, {page}")
