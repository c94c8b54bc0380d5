"""The Python API: what a notebook needs, and exactly what the command line and the web service call.

    import cxrlab
    data = cxrlab.load_data(dataset="pneumoniamnist", download=True)          # the task's train / val / test
    run = cxrlab.train(cxrlab.Config(dataset="pneumoniamnist", download=True, epochs=10, out="runs/mnv3"))
    run                                   # provenance, best epoch, headline metrics (a table in a notebook)
    run.metrics("test"); run.history; run.predict(["xray.png"]); run.explain(["xray.png"]); run.figures["curves"]
    report = cxrlab.compare(cxrlab.Config(dataset="pneumoniamnist", download=True, epochs=3), seeds=[0, 1])
    report                                # the HTML report inline
    run = cxrlab.load_run("runs/mnv3")    # any finished run directory

Options are the Config fields, by the same names as the CLI flags and YAML keys (``--data-root`` is
``data_root``), checked by the same ``Config.validate``. Messages (epochs, tables, what was written) go to the
standard logger ``cxrlab`` and are shown on stdout; ``logging.getLogger("cxrlab").setLevel(logging.WARNING)``
silences them (see cxrlab/console.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

# Re-exported: the package's public names are one list, cxrlab.__all__; the CLI also reads BACKENDS here.
from cxrlab.api.entry import StudyEntry as StudyEntry
from cxrlab.api.entry import load_entry as load_entry
from cxrlab.api.entry import names_an_entry as names_an_entry
from cxrlab.api.run import BACKENDS as BACKENDS
from cxrlab.api.run import Report as Report
from cxrlab.api.run import Run as Run
from cxrlab.api.run import Table as Table
from cxrlab.api.run import load_run as load_run
from cxrlab.api.site import SiteEntry as SiteEntry
from cxrlab.api.site import is_site as is_site
from cxrlab.api.site import load_answerer as load_answerer
from cxrlab.api.site import load_site as load_site
from cxrlab.api.site import site_calibrate as site_calibrate
from cxrlab.api.site import site_check as site_check
from cxrlab.config import STUDY_KEYS, Config, Study, from_dict, study_from
from cxrlab.core.runs import RunDir
from cxrlab.data.datasets import get_dataset
from cxrlab.training.shared import HEARTBEAT_S, Shared

if TYPE_CHECKING:  # the API imports torch, numpy and the rest where a function needs them: `cxrlab status` stays quick
    from cxrlab.data.task import TaskData
    from cxrlab.training.progress import StudyProgress


def config(base: Config | None = None, **options) -> Config:
    """A validated Config: ``base`` (or the defaults) with ``options`` on top, checked as the CLI checks its flags."""
    values = base.to_dict() if base else {}
    if base and "dataset" in options and "classes" not in options and list(base.classes) == list(get_dataset(base.dataset).default_classes):
        values.pop("classes")  # the new data set's own classes, not the old one's defaults
    return from_dict({**values, **options}, source="options")


def load_data(cfg: Config | None = None, splits=("train", "val", "test"), **options) -> TaskData:
    """The task's splits (uint8 images, 0/1 targets), its classes and the file's provenance, for ``cfg`` with
    ``options`` on top (dataset, size, data_root, download, task, classes). A missing file gets the CLI's message
    (file, URL, MD5, where to put it); ``download=True`` fetches it from Zenodo."""
    from cxrlab.data.task import task_data

    cfg = config(cfg, **options)
    return task_data(cfg, splits=splits, download=cfg.download)


def describe_data(cfg: Config, duplicate_threshold: float | None = None, duplicates_csv: str | None = None) -> str:
    """What ``cxrlab data`` prints: the file, its provenance, the task's images per split and class, and with
    ``duplicate_threshold`` the near-duplicate pairs within and across splits (written to ``duplicates_csv``).
    Reads numpy arrays only: no torch."""
    from cxrlab.data.task import class_counts, data_label, task_arrays

    data = task_arrays(cfg.data_root, cfg.size, cfg.classes, download=cfg.download, task=cfg.task, dataset=cfg.dataset)
    prov = data.provenance
    counts = {split: class_counts(targets) for split, (_, targets) in data.splits.items()}
    lines = [f"file:   {prov['file']}", f"md5:    {prov['md5']} (official: {prov['official_md5']})", f"data:   {data_label(prov)}"]
    if data.task == "multilabel":
        lines += [f"task:   multilabel, all images, {len(data.classes)} labels (positives per label)", ""]
        lines.append(f"{'label':<20}" + "".join(f"{split:>10}" for split in data.splits))
        lines += [f"{label:<20}" + "".join(f"{counts[split][i]:>10,}" for split in data.splits) for i, label in enumerate(data.classes)]
        lines.append(f"{'images':<20}" + "".join(f"{len(targets):>10,}" for _, targets in data.splits.values()))
        return "\n".join(lines)
    which = "every image" if get_dataset(cfg.dataset).binary_task == "all-images" else "images whose only positive label is one of them"
    lines += [f"task:   {data.classes[0]} (label 0) vs {data.classes[1]} (label 1), {which}", ""]
    lines.append(f"{'split':<8}{data.classes[0]:>16}{data.classes[1]:>16}{'total':>10}")
    lines += [f"{split:<8}{a:>16,}{b:>16,}{a + b:>10,}" for split, (a, b) in counts.items()]
    if duplicate_threshold is not None:
        from cxrlab.data.duplicates import near_duplicates, summary_lines, write_pairs

        images = {split: arrays for split, (arrays, _) in data.splits.items()}
        pairs = near_duplicates(images, duplicate_threshold)
        lines += ["", *summary_lines(pairs, images, duplicate_threshold)]
        if duplicates_csv:
            write_pairs(pairs, duplicates_csv)
            lines.append(f"wrote {len(pairs):,} pairs (rows within each split's task images) to {duplicates_csv}")
    return "\n".join(lines)


def phantom(
    out, size: int = 28, dataset: str = "chestmnist", official_counts: bool = False, seed: int = 0, split_sizes: dict | None = None
) -> Path:
    """Write a PHANTOM (synthetic) data file in the official layout into ``out``, for tests and demos; its path."""
    from cxrlab.data.phantom import write_phantom

    return write_phantom(out, size, official_counts, seed, split_sizes, dataset)


def train(cfg: Config | None = None, progress: bool | None = None, **options) -> Run:
    """Train one model (``cfg`` with ``options`` on top) and return its finished Run."""
    from cxrlab.training.loop import train as train_loop

    run = train_loop(config(cfg, **options), progress=progress)
    return load_run(run.path)


def resume(path, progress: bool | None = None) -> Run:
    """Continue an interrupted run from its last checkpoint."""
    from cxrlab.training.loop import resume_training

    return load_run(resume_training(path, progress=progress).path)


def study(section: dict | None = None, source: str = "options", **overrides) -> Study:
    """A validated study plan (models, seeds, ensemble, tta, out, recipes, holdout): a config file's ``compare:``
    section with ``overrides`` on top."""
    return study_from(section, overrides, source=source)


def shared(storage: str | None, name: str, heartbeat_s: int | None = None) -> Shared | None:
    """Where a study's runs are shared between machines (an Optuna storage URL, the study's name); None: this machine
    alone, no database."""
    if storage is None:
        return None
    return Shared(storage, name, HEARTBEAT_S if heartbeat_s is None else heartbeat_s)


def compare(
    cfg: Config | None = None,
    plan: Study | None = None,
    workers: int | None = None,
    progress: bool | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    heartbeat_s: int | None = None,
    score_test: bool = False,
    rescore: bool = False,
    **options,
) -> Report:
    """The study: every model x seed (reused when finished), trained sealed (test never loaded); with
    ``score_test``, test scored once, by the choices written before it (``score``): TTA and ensemble rows, the
    report; ``rescore``: even if the study's test was scored before (the report says so). Returns the Report.
    ``options``: the study's (models, seeds, ensemble, tta, out, recipes, holdout) and the runs' Config fields, by
    name, each with its schema default; or ``plan`` (from ``study``) for the study's. ``storage`` (an Optuna
    database URL): the runs are shared with every machine whose command names the same storage and study
    (``study_name``, default compare-FOLDER) and the same ``out`` on shared storage."""
    from cxrlab.errors import ConfigError
    from cxrlab.report.compare import compare as compare_study
    from cxrlab.training.distributed import launched_by_torchrun

    if launched_by_torchrun():
        raise ConfigError("compare trains one model after another in one process; run 'torchrun ... -m cxrlab train' per model instead")
    planned = {key: options.pop(key) for key in STUDY_KEYS if key in options}
    if plan is None:
        plan = study(None, "cxrlab.compare", **planned)
    elif planned:
        raise ConfigError(f"the study's options come from plan or as keywords, not both: {', '.join(planned)}")
    where = shared(storage, study_name or f"compare-{Path(plan.out).resolve().name}", heartbeat_s)
    compare_study(config(cfg, **options), plan, progress=progress, workers=workers, shared=where, score_test=score_test, rescore=rescore)
    return Report(Path(plan.out))


def score(study_folder, rescore: bool = False) -> Report | dict:
    """Score a compare or cv study's test, once, by the choices its folder holds (choices.json, written by ``compare``
    or ``cross_validate`` before test was read): refused when the choices or the runs changed since (naming what
    differs), or when test was scored already, unless ``rescore`` (the report then says it was rescored). Returns the
    compare study's Report, or the cross-validation's results."""
    from cxrlab.layout import STUDY_FILES

    if (Path(study_folder) / STUDY_FILES["cv_options"]).is_file():
        from cxrlab.report.crossval import score_cv

        return score_cv(study_folder, rescore)
    from cxrlab.report.compare import score_study

    score_study(study_folder, rescore)
    return Report(Path(study_folder))


def write_answers(results: list, path) -> Path:
    """Every answer (``Run.predict``'s or ``StudyEntry.predict``'s) to ``path``: .csv (one row per image) or .jsonl
    (one JSON object per line), written atomically; refused for another suffix before anything is written."""
    import json

    from cxrlab.files import atomic_write_text
    from cxrlab.report.tables import write_rows

    path = answers_path(path)
    rows = [r.to_dict() for r in results]
    if path.suffix == ".jsonl":
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    else:
        write_rows(path, [{k: json.dumps(v) if isinstance(v, dict) else v for k, v in row.items()} for row in rows])
    return path


def answers_path(path) -> Path:
    """``path`` as a file for answers: .csv or .jsonl; anything else refused."""
    from cxrlab.errors import ConfigError

    path = Path(path)
    if path.suffix not in (".csv", ".jsonl"):
        raise ConfigError(f"--out {path}: answers are written to a .csv or a .jsonl file")
    return path


def seal(study_folder) -> str | None:
    """Whether a compare or cv study's test is still sealed, or when and by which choices it was scored; None for a
    folder that is no such study. No torch."""
    from cxrlab.layout import STUDY_FILES
    from cxrlab.report.choices import Seal

    if not any((Path(study_folder) / STUDY_FILES[key]).is_file() for key in ("options", "cv_options")):
        return None
    return Seal(study_folder).describe()


def robustness(path, entry: str | None = None, seed: int | None = None, out=None) -> list[dict]:
    """ROC-AUC, sensitivity and specificity on val under each acquisition-like corruption at severities 1-5
    (data/corruptions.py), for a run, a study's entry or a site folder; written to ``out`` (robustness.md, .csv)."""
    from cxrlab.report.robustness import robustness as measure

    return measure(load_answerer(path, entry, seed, backend="pytorch").trained(), Path(out) if out else None)


def cross_validate(
    cfg: Config,
    folds: int = 5,
    out="runs/cv",
    workers: int | None = None,
    progress: bool | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    heartbeat_s: int | None = None,
    score_test: bool = False,
    rescore: bool = False,
) -> dict:
    """k-fold cross-validation over train: one run per fold (reused when finished), trained sealed, and the folds'
    ensemble, every choice written down on folds and val; test scored once with ``score_test`` (or later by
    ``score``). Returns {'folds': [...], 'ensemble': {...}}, test empty while sealed. ``storage``: shared as compare's."""
    from cxrlab.report.crossval import cross_validate as cv

    where = shared(storage, study_name or f"cv-{Path(out).resolve().name}", heartbeat_s)
    return cv(cfg, folds, out, progress=progress, workers=workers, shared=where, score_test=score_test, rescore=rescore)


def search(
    cfg: Config,
    method: str = "optuna",
    trials: int | None = None,
    workers: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    out="runs/search",
    heartbeat_s: int | None = None,
) -> dict:
    """A hyperparameter search (grid or Optuna; continued when its study exists), chosen on val. Returns the best
    trial. ``trials`` caps the study as a whole, whichever machines run it."""
    from cxrlab.report.search import search as run_search

    return run_search(cfg, method, trials, workers, storage, study_name, out, HEARTBEAT_S if heartbeat_s is None else heartbeat_s)


def status(folder) -> StudyProgress:
    """Where a study stands (runs finished / running / left, time left), read from its folder; no torch."""
    from cxrlab.training.progress import read_status

    return read_status(folder)


def operating_point(path, **options):
    """Choose a finished run's operating point again on its own evidence (never test): ``threshold``,
    ``rule_out_sensitivity``, ``rule_in_specificity``, ``bound_level``, ``decision``, ``prevalence``. Returns the
    OperatingPoint; refuses a target the evidence cannot show, naming the best reachable value."""
    from cxrlab.evaluation.evaluate import refit_operating_point

    return refit_operating_point(path, options)


def fit_ood(path) -> dict:
    """Fit a finished run's out-of-distribution check (again), from its weights and data, no retraining. An exported
    model carries the check in its graph, so a run already exported is exported again with the new one (and
    quantised again where it had been), and predictions keep working. Returns the check's measurements."""
    from cxrlab.evaluation.evaluate import fit_ood as fit

    report = fit(path)
    run = RunDir(path)
    if run.onnx.is_file():
        load_run(path).export(quantize=run.quantization_report.is_file())
    return report


def evaluate(path, split: str = "test", device: str | None = None) -> dict:
    """Score a finished run on ``split`` again at its operating point; the metrics."""
    from cxrlab.evaluation.evaluate import evaluate_run

    return evaluate_run(path, split, device)


def bench(path, batch: int = 256) -> list[dict]:
    """Time a finished run's inference backends (PyTorch eager, channels_last, onnxruntime fp32 / INT8, predict end
    to end); writes RUN/bench.json and returns its rows."""
    from cxrlab.export.bench import bench_run

    return bench_run(path, batch)
