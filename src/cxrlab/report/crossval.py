"""k-fold cross-validation over train, sealed as a compare study is: fold k trains on the other folds and chooses
its best epoch, threshold and temperature on fold k; the fold models together form an ensemble (mean probability;
its operating point and temperature chosen on the official val). Every choice is written to choices.json before
test is read; test is scored once, by `cxrlab score OUT` (or `cv --score-test`).

    OUT/cv.yaml                  the training options and the number of folds (what scoring reads)
    OUT/fold<k>/                 one run directory per fold (reused when the config matches), trained sealed
    OUT/choices.json, seal.json  every choice and the seal (report/choices.py); the headline is the fold ensemble
    OUT/cv.csv                   one line per fold and for the fold ensemble: val, and test once scored
    OUT/cv.md, cv.html           mean ± sd over folds, the ensemble row, the seal, the run directories
    OUT/test_answers.csv         once scored: every entry's answer for every test image, as the deployed entry gives it
"""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from cxrlab.config import POINT_OPTIONS, Config, from_dict, resolve
from cxrlab.config.schema import load_yaml
from cxrlab.console import logger
from cxrlab.core.runs import RunDir
from cxrlab.data.task import data_label, is_phantom, task_data
from cxrlab.errors import ConfigError
from cxrlab.evaluation.ensemble import combine
from cxrlab.evaluation.inference import load_trained
from cxrlab.evaluation.operating_point import OperatingPoint
from cxrlab.evaluation.scoring import positive_view
from cxrlab.files import atomic_write_text
from cxrlab.layout import STUDY_FILES
from cxrlab.report.choices import Seal, choices_record, entry_key, entry_record
from cxrlab.report.compare import write_test_answers
from cxrlab.report.document import Document
from cxrlab.report.study import Entry, check_compatible, check_data_once, choose, score, within
from cxrlab.report.tables import mean_sd
from cxrlab.training.runner import run_all
from cxrlab.training.shared import Shared

log = logger(__name__)

CV_KEYS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1", "roc_auc", "ece")
ENSEMBLE = "fold ensemble"  # cross-validation's deployable model, and so its headline entry


def cross_validate(
    base: Config,
    folds: int,
    out: str | Path,
    progress: bool | None = None,
    workers: int | None = None,
    shared: Shared | None = None,
    score_test: bool = False,
    rescore: bool = False,
) -> dict:
    """Train (or reuse) the fold runs, ``workers`` at a time (default: training/runner.py's rule; ``shared``: with the
    workers of every machine that joins the shared study), sealed; choose the fold ensemble's operating point on val
    and write every choice down; with ``score_test``, score test once (``score_cv``). Returns
    {'folds': [{'run', 'val', 'test'}], 'ensemble': {'val', 'test', 'runs'}}: 'test' empty while sealed."""
    if folds < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got {folds}")
    base = base.validate()
    if base.task != "binary":
        raise ConfigError("cross-validation folds are stratified by class: binary task only")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    configs = {k: resolve(replace(base, cv_folds=folds, cv_fold=k, out=str(out / f"fold{k}"), sealed=True)) for k in range(folds)}
    md5 = check_data_once(base, list(configs.values()))
    values = {key: value for key, value in base.to_dict().items() if key not in ("out", "cv_folds", "cv_fold")}
    atomic_write_text(out / STUDY_FILES["cv_options"], yaml.safe_dump({"folds": folds, **values}, sort_keys=False))
    runs = list(run_all(configs, progress, workers, base.threads, status_dir=out, shared=shared, identity={"data_md5": md5}).values())
    check_compatible(runs)
    data = task_data(base, splits=("val",), task="binary")  # never test
    entries = fold_entries(out, base, runs, None, data)
    write_cv_choices(out, base, folds, runs, entries, rescore)
    if not score_test:
        write_cv_report(out, base, entries, Seal(out).describe(), data.provenance)
        log.info(f"\n{Seal(out).describe()}")
        return results_of(entries)
    return score_cv(out, rescore, again_is_done=True)


def fold_entries(out: Path, base: Config, runs: list[RunDir], choices: dict | None, data) -> list[Entry]:
    """Each fold model at the point it chose on its fold, and the fold ensemble at its point: chosen on val, or read
    from ``choices`` once written; scored on every split ``data`` holds (test only in the scoring step)."""
    entries, probs = [], []
    for k, run in enumerate(runs):
        trained = load_trained(run.path)
        curves = {
            split: positive_view(part.targets.numpy(), trained.probs(part.images)[:, 0], data.classes, base.positive)
            for split, part in data.splits.items()
        }
        probs.append(curves)
        point, temperature = trained.point, trained.temperature  # each chosen on fold k when the run finished
        if choices is not None:
            chosen = choices["entries"][entry_key(f"fold{k}", base.seed)]
            point, temperature = OperatingPoint.from_dict(chosen["point"]), chosen["temperature"]
        scored = score(base, curves, point, temperature)
        info = {"runs": [within(run.path, out)], "point": point.to_dict(), "temperature": temperature}
        entries.append(Entry(f"fold{k}", "model", base.seed, scored["val"], scored.get("test", {}), curves, info))
    equal = np.full(len(runs), 1 / len(runs))  # as the deployed entry combines its members (evaluation/entry.py)
    curves = {split: (probs[0][split][0], combine([p[split][1] for p in probs], equal)) for split in data.splits}
    if choices is None:
        point, temperature, _ = choose(base, {"val": curves["val"]})  # on the official val
    else:
        chosen = choices["entries"][entry_key(ENSEMBLE, base.seed)]
        point, temperature = OperatingPoint.from_dict(chosen["point"]), chosen["temperature"]
    scored = score(base, curves, point, temperature)
    info = {"runs": [r for e in entries for r in e.info["runs"]], "point": point.to_dict(), "temperature": temperature}
    return [*entries, Entry(ENSEMBLE, "ensemble", base.seed, scored["val"], scored.get("test", {}), curves, info)]


def write_cv_choices(out: Path, base: Config, folds: int, runs: list[RunDir], entries: list[Entry], rescore: bool) -> str:
    """choices.json in compare's layout (so that `cxrlab predict | serve OUT` deploy its entries) and the seal."""
    rules = {**{k: getattr(base, k) for k in POINT_OPTIONS}, "threshold": base.threshold_rule, "folds": folds, "headline": ENSEMBLE}
    records = {entry_key(e.name, e.seed): entry_record(e) for e in entries}  # weights None: the fold ensemble is the mean
    data_md5 = runs[0].read_json(runs[0].summary)["data_md5"]
    choices = choices_record(out, runs, data_md5, rules, {"entry": ENSEMBLE}, records)
    return Seal(out).write(choices, rescore)


def score_cv(out, rescore: bool = False, again_is_done: bool = False) -> dict:
    """Score a cross-validation's test: once, by exactly the choices written before (refused when they or the runs
    changed since, or when test was scored already, unless ``rescore``); write cv.csv, the report and the answers."""
    out = Path(out)
    seal = Seal(out)
    return seal.score_once(rescore, again_is_done, lambda choices, digest: _score_cv(out, seal, choices, digest)) or {}


def _score_cv(out: Path, seal: Seal, choices: dict, digest: str) -> dict:
    values = load_yaml(out / STUDY_FILES["cv_options"])
    folds = values.pop("folds")
    base = from_dict(values, source=str(out / STUDY_FILES["cv_options"]))
    data = task_data(base, splits=("val", "test"), task="binary")
    runs = [RunDir(out / choices["runs"][f"fold{k}"]["path"]) for k in range(folds)]
    for run in runs:
        run.check_data(data.provenance)
    log.info(f"\nscoring test once, by the choices written {choices['written']} (SHA-256 {digest})")
    entries = fold_entries(out, base, runs, choices, data)
    write_test_answers(out, entries, choices, data, digest)
    seal.mark_scored(digest)
    write_cv_report(out, base, entries, seal.describe(), data.provenance)
    for split in ("val", "test"):
        log.info(
            f"{split}: "
            + "  ".join(f"{k} {mean_sd(np.array([getattr(e, split)[k] for e in entries[:-1]]))}" for k in ("accuracy", "roc_auc"))
            + f"   {ENSEMBLE}: "
            + "  ".join(f"{k} {getattr(entries[-1], split)[k]:.3f}" for k in ("accuracy", "roc_auc"))
        )
    log.info(f"\n{seal.describe()}\nwritten: {out / 'cv.md'}, {out / 'cv.html'}, {out / 'cv.csv'}")
    return results_of(entries)


def results_of(entries: list[Entry]) -> dict:
    *folds, ensemble = entries
    return {
        "folds": [{"run": e.info["runs"][0], "val": e.val, "test": e.test} for e in folds],
        "ensemble": {"val": ensemble.val, "test": ensemble.test, "runs": ensemble.info["runs"]},
    }


def write_cv_report(out: Path, base: Config, entries: list[Entry], seal_line: str, provenance: dict) -> None:
    """cv.csv, cv.md and cv.html: val always; test once scored."""
    *folds, ensemble = entries
    splits = ("val", "test") if ensemble.test else ("val",)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["entry", *(f"{split}_{k}" for split in splits for k in CV_KEYS), "runs"])
    for e in entries:
        writer.writerow([e.name, *(getattr(e, split)[k] for split in splits for k in CV_KEYS), " ".join(e.info["runs"])])
    atomic_write_text(out / "cv.csv", buffer.getvalue())

    label = data_label(provenance)
    doc = Document(f"cxrlab {len(folds)}-fold cross-validation: {base.model}", warning=label if is_phantom(provenance) else None)
    doc.text(
        f"Data: {label}. Stratified {len(folds)}-fold split of train (the same folds for every model and seed); "
        "fold k trains on the other folds and chooses its best epoch, threshold and temperature on fold k. The fold ensemble "
        f"averages the fold models' probabilities; its threshold (rule `{base.threshold_rule}`) is chosen on the official val. "
        f"Every choice was written to `choices.json` before test was read: {seal_line}."
    )
    shown = ("accuracy", "roc_auc", "balanced_accuracy")
    header = ["entry", *(f"{split} {k}" for split in splits for k in shown)]
    rows = [[f"fold {i}", *(f"{getattr(e, split)[k]:.3f}" for split in splits for k in shown)] for i, e in enumerate(folds)]
    rows.append(["**mean ± sd**", *(mean_sd(np.array([getattr(e, split)[k] for e in folds])) for split in splits for k in shown)])
    rows.append([ENSEMBLE, *(f"{getattr(ensemble, split)[k]:.3f}" for split in splits for k in shown)])
    doc.table(header, rows)
    last = splits[-1]
    doc.heading(f"All metrics on {last}, mean ± sd over folds")
    doc.table(
        ["metric", "folds", ENSEMBLE],
        [[k, mean_sd(np.array([getattr(e, last)[k] for e in folds])), f"{getattr(ensemble, last)[k]:.3f}"] for k in CV_KEYS],
    )
    doc.heading("Runs")
    doc.bullets([f"fold {i}: `{e.info['runs'][0]}`" for i, e in enumerate(folds)])
    doc.write(out, "cv")
