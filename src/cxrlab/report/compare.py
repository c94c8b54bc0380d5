"""The main experiment: train the models for several seeds under one protocol (train on train, choose on the
evidence: val, or a held-out fold of train and val; report on test, once) and write one report from the runs. Every
number in the report is one a run or this module measured; nothing is typed in.

    OUT/compare.yaml          the study's options and training options: `cxrlab compare --config` reproduces it
                              (a `recipes:` entry gives one model training options of its own, e.g. MedMNIST v2's
                              for the reference resnet18)
    OUT/runs/<model>-seed<k>/ one run directory per model and seed (reused when the config matches), trained sealed
    OUT/choices.json          every choice, written before test is read; OUT/seal.json: sealed or scored (choices.py)
    OUT/comparison.csv        one line per entry (model, model + TTA, ensemble) and seed, with its run directories
    OUT/report.md, .html      the report; figures in OUT/figures/ (embedded in the HTML)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from cxrlab.config import POINT_OPTIONS, Config, Study, from_dict, study_from
from cxrlab.config.schema import load_yaml
from cxrlab.console import logger
from cxrlab.core.runs import RunDir
from cxrlab.data.task import TaskData, data_label, fold_view, task_data
from cxrlab.errors import RunDirError
from cxrlab.evaluation.ensemble import check_weights, combine, fit_weights
from cxrlab.evaluation.entry import EntryModel
from cxrlab.evaluation.inference import load_trained, predict_probs, predict_probs_tta
from cxrlab.evaluation.operating_point import OperatingPoint
from cxrlab.evaluation.predict import predict_images
from cxrlab.evaluation.scoring import positive_view
from cxrlab.export.bench import deployed_speed
from cxrlab.layout import STUDY_FILES
from cxrlab.report.choices import Seal, choices_record, entry_key, entry_record
from cxrlab.report.claims import HEADLINE_RULE, headline
from cxrlab.report.compare_multilabel import compare_multilabel, score_multilabel
from cxrlab.report.compare_report import write_report
from cxrlab.report.study import Entry, choose, save_study, score, train_accuracy_at_best, train_runs, within
from cxrlab.report.tables import comparison_rows, grouped, write_csv, write_rows
from cxrlab.training.shared import Shared

log = logger(__name__)


def run_curves(trained, data: TaskData, splits: dict, cfg: Config, views: int, seed: int) -> tuple[dict, dict]:
    """A run's (targets, P(positive)) per split, plain and with ``views``-view TTA (its views seeded by ``seed``)."""
    curves, tta_curves = {}, {}
    for split, part in splits.items():
        targets = part.targets.numpy()
        plain = predict_probs(trained.model, part.images, cfg, trained.device)
        curves[split] = positive_view(targets, plain[:, 0], data.classes, cfg.positive)
        if views > 1:
            probs = predict_probs_tta(trained.model, part.images, cfg, trained.device, views, seed=seed, plain=plain)
            tta_curves[split] = positive_view(targets, probs[:, 0], data.classes, cfg.positive)
    return curves, tta_curves


def entry_of(name: str, kind: str, seed: int, cfg: Config, curves: dict, info: dict, choices: dict | None) -> Entry:
    """One entry: its operating point and temperature chosen on its evidence, or, once written down (``choices``),
    read from there unchanged; scored on every labelled split it has (test only in the scoring step)."""
    if choices is None:
        point, temperature, extra = choose(cfg, curves)
    else:
        chosen = choices["entries"][entry_key(name, seed)]
        point, temperature = OperatingPoint.from_dict(chosen["point"]), chosen["temperature"]
        extra = chosen["evidence"]
    scored = score(cfg, curves, point, temperature)
    details = {"point": point.to_dict(), "temperature": temperature, **extra}
    return Entry(name, kind, seed, scored["val"], scored.get("test", {}), curves, {**info, **details})


INFO_KEYS = ("parameters", "model_size_mb", "train_accuracy", "best_epoch", "seconds_per_epoch", "train_seconds", "device", "runs")


def model_entries(runs: dict, data: TaskData, study: Study, base: Config, choices: dict | None = None) -> list[Entry]:
    """Every run scored by the study's rules (operating point, bootstrap), whatever its own were: the same rules for
    all rows. A run that held out a fold of train is also scored on it: with val, the evidence its point is chosen on.
    Without test in ``data`` (before the choices are written), the entries hold val only."""
    entries, speed, folds = [], {}, {}
    for (name, seed), run in runs.items():
        trained = load_trained(run.path)
        summary = run.read_json(run.summary)
        cfg = replace(trained.cfg, **{k: getattr(base, k) for k in POINT_OPTIONS}, n_bootstrap=base.n_bootstrap)
        splits = {split: data.splits[split] for split in ("val", "test") if split in data.splits}
        if cfg.cv_folds:
            key = (cfg.cv_folds, cfg.cv_fold)
            folds[key] = folds.get(key) or fold_view(data, *key).splits["val"]
            splits["fold"] = folds[key]
        curves, tta_curves = run_curves(trained, data, splits, cfg, study.tta, seed)
        if name not in speed and "test" in data.splits:  # per architecture, once: the first seed's run
            log.info(f"timing inference (onnxruntime): {name}")
            speed[name] = deployed_speed(trained, data.splits["test"].images)
        info = {
            "parameters": summary["parameters"],
            "model_size_mb": summary["model_size_mb"],
            "train_accuracy": train_accuracy_at_best(run, summary["best_epoch"]),
            "best_epoch": summary["best_epoch"],
            "seconds_per_epoch": summary["seconds_per_epoch"],
            "train_seconds": summary["train_seconds"],
            "device": summary["device"],
            "side_by_side": summary.get("side_by_side"),  # not recorded by runs older than this field
            "threads": summary.get("threads"),
            **speed.get(name, {}),
            "runs": [within(run.path, study.out)],
            "ood_flagged": (summary.get("ood") or {}).get("flagged"),  # None: a run fitted before the check (cxrlab ood RUN)
        }
        entries.append(entry_of(name, "model", seed, cfg, curves, info, choices))
        if tta_curves:
            tta_info = {k: info[k] for k in INFO_KEYS}
            entries.append(entry_of(f"{name} + TTA×{study.tta}", "tta", seed, cfg, tta_curves, tta_info, choices))
    return entries


def ensemble_entries(singles: list[Entry], base: Config, study: Study, choices: dict | None = None) -> list[Entry]:
    """The ensemble of every seed: its weights fitted or set on the evidence (or read from ``choices``)."""
    entries = []
    for seed in study.seeds:
        members = [next(e for e in singles if e.name == name and e.seed == seed) for name in study.models]
        if choices is not None:
            weights = np.array([choices["entries"][entry_key("ensemble", seed)]["weights"][m.name] for m in members])
        elif study.ensemble == "fit":
            weights = fit_weights(members[0].curves["val"][0], [m.curves["val"][1] for m in members])
        elif study.ensemble == "equal":
            weights = np.full(len(members), 1 / len(members))
        else:
            weights = check_weights(study.ensemble, study.models)
        shared = [split for split in members[0].curves if all(split in m.curves for m in members)]  # a fold: every member held it out
        curves = {split: (members[0].curves[split][0], combine([m.curves[split][1] for m in members], weights)) for split in shared}
        info = {
            "parameters": sum(m.info["parameters"] for m in members),
            "model_size_mb": sum(m.info["model_size_mb"] for m in members),
            "train_seconds": sum(m.info["train_seconds"] for m in members),
            "device": members[0].info["device"],
            "weights": {m.name: float(w) for m, w in zip(members, weights)},
            "runs": [r for m in members for r in m.info["runs"]],
        }
        entries.append(entry_of("ensemble", "ensemble", seed, replace(base, seed=seed), curves, info, choices))
    return entries


def study_entries(runs: dict, data: TaskData, study: Study, base: Config, choices: dict | None = None) -> list[Entry]:
    """Every entry of the study (models, TTA, ensemble), in the report's order."""
    entries = model_entries(runs, data, study, base, choices)
    if study.ensemble_on:
        entries += ensemble_entries([e for e in entries if e.kind == "model"], base, study, choices)
    entries.sort(key=lambda e: ({"model": 0, "tta": 1, "ensemble": 2}[e.kind], e.name, e.seed))
    return entries


def write_choices(out: Path, base: Config, study: Study, runs: dict, rescore: bool = False) -> str:
    """Choose every entry's operating point, the ensemble weights and the headline on the evidence, test never
    loaded; write them down (report/choices.py) and return their SHA-256."""
    data = task_data(base, splits=("train", "val"))  # train: a held-out fold's images; never test
    log.info(
        "\nchoosing on the evidence" + (f", {study.tta}-view TTA" if study.tta > 1 else "") + (", ensemble" if study.ensemble_on else "")
    )
    entries = study_entries(runs, data, study, base)
    named, evidence_auc = headline(grouped(entries))
    rules = {
        **{k: getattr(base, k) for k in POINT_OPTIONS},
        "threshold": base.threshold_rule,
        "holdout": study.holdout,
        "tta": study.tta,
        "ensemble": study.ensemble,
        "headline": HEADLINE_RULE,
    }
    records = {entry_key(e.name, e.seed): entry_record(e, study.tta if e.kind == "tta" else 1, e.info.get("weights")) for e in entries}
    headline_record = {"entry": named, "evidence_roc_auc": evidence_auc}
    choices = choices_record(out, runs.values(), data.provenance["md5"], rules, headline_record, records)
    return Seal(out).write(choices, rescore)


def score_study(out, rescore: bool = False, again_is_done: bool = False) -> list[Entry]:
    """Score a study's test: once, by exactly the choices written down before (refused when they or the runs changed
    since, or when test was scored already, unless ``rescore``); write comparison.csv and the report. One process at
    a time; ``again_is_done`` (compare --score-test): test scored already by these very choices is not an error but
    done, as when another machine of a shared study scored it first."""
    out = Path(out)
    seal = Seal(out)
    return seal.score_once(rescore, again_is_done, lambda choices, digest: _score(out, seal, choices, digest)) or []


def _score(out: Path, seal: Seal, choices: dict, digest: str) -> list[Entry]:
    base, study = read_study(out)
    if base.task != "binary":
        return score_multilabel(out, base, study, seal, choices, digest)
    data = task_data(base)
    runs = {}
    for name, seed in ((m, s) for s in study.seeds for m in study.models):
        tag = choices["entries"][entry_key(name, seed)]["runs"][0]  # a model entry's one run
        runs[name, seed] = RunDir(out / choices["runs"][tag]["path"])
        runs[name, seed].check_data(data.provenance)
    log.info(f"\nscoring test once, by the choices written {choices['written']} (SHA-256 {digest})")
    entries = study_entries(runs, data, study, base, choices)
    write_test_answers(out, entries, choices, data, digest)
    seal.mark_scored(digest)
    write_csv(out / STUDY_FILES["comparison"], entries)
    md, page = write_report(out, base, study, entries, runs, data, choices["headline"]["entry"], seal.describe())
    header, rows = comparison_rows(grouped(entries))
    keep = [header.index(title) for title in ("entry", "seeds", "val acc", "test acc", "ROC-AUC")]
    log.info("\n" + data_label(data.provenance))
    log.info("\n".join("  ".join(f"{row[i]:<30}" for i in keep) for row in [header, *rows]))
    log.info(f"\n{seal.describe()}")
    log.info(f"written: {md}, {page}, {out / STUDY_FILES['comparison']}")
    return entries


ANSWER_TOLERANCE = 1e-6  # P(positive) of the deployable entry against the scoring step's, per image


def write_test_answers(out: Path, entries: list[Entry], choices: dict, data: TaskData, digest: str) -> None:
    """OUT/test_answers.csv: every entry's answer for every test image, as the entry answers it when deployed
    (``load_entry``: the refer band and the out-of-distribution check), checked against the probability the report
    scored: a difference over ANSWER_TOLERANCE is a defect, refused before anything is written. Each model entry's
    share of test its check flags joins its info (the report's out-of-distribution table)."""
    images = data.splits["test"].images.numpy()
    loaded, rows = {}, []
    for e in entries:
        model = EntryModel.from_choices(out, choices["entries"][entry_key(e.name, e.seed)], choices["runs"], digest, loaded=loaded)
        answered = predict_images(model, images, [f"test[{i}]" for i in range(len(images))])
        targets, scored = e.curves["test"]
        given = np.array([a.probability if a.probability is not None else np.nan for a in answered])
        flagged = np.array([a.in_distribution is False for a in answered])
        gap = np.nanmax(np.abs(given - scored)) if (~flagged).any() else 0.0
        if gap > ANSWER_TOLERANCE:
            raise RunDirError(f"{e.name}, seed {e.seed}: deployed P({model.cfg.positive}) differs from the scored one by {gap:.2g}")
        if e.kind == "model" and model.ood is not None:  # the check's share of test, measured here: a sealed run never saw test
            e.info["ood_flagged"] = {"test split (chest X-rays)": float(flagged.mean()), **(e.info.get("ood_flagged") or {})}
        positive, negative = model.cfg.positive, model.negative
        rows += [
            {
                "entry": e.name,
                "seed": e.seed,
                "image": i,
                "truth": positive if targets[i] == 1 else negative,
                "answer": a.answer,
                "probability": repr(float(scored[i])),  # P(positive) as scored, in full; predict gives none when flagged
                "in_distribution": a.in_distribution,
                "decision": a.decision,
            }
            for i, a in enumerate(answered)
        ]
    write_rows(out / STUDY_FILES["answers"], rows)


def read_study(out: Path) -> tuple[Config, Study]:
    """The study's options, as its compare.yaml holds them, with the folder where it is now."""
    values = load_yaml(out / STUDY_FILES["options"])
    study = study_from(values.pop("compare", None), {"out": str(out)}, source=str(out / STUDY_FILES["options"]))
    return from_dict(values, source=str(out / STUDY_FILES["options"])), study


def compare(
    base: Config,
    study: Study | None = None,
    progress: bool | None = None,
    workers: int | None = None,
    shared: Shared | None = None,
    score_test: bool = False,
    rescore: bool = False,
) -> list[Entry]:
    """Train (or reuse) every model for every seed (``workers`` runs at a time; default: training/runner.py's rule;
    ``shared``: with the workers of every machine that joins the shared study), sealed: test is never loaded; then
    choose every entry's operating point, the ensemble weights and the headline on the evidence and write them
    down. With ``score_test``: score test, once, by those choices (``score_study``)."""
    study = (study or Study()).validate()
    base = base.validate()
    out = Path(study.out)
    if base.task != "binary":
        compare_multilabel(base, study, progress, workers, shared, rescore)
    else:
        out.mkdir(parents=True, exist_ok=True)
        save_study(out, base, study)
        runs = train_runs(base, study, progress, workers, shared)
        write_choices(out, base, study, runs, rescore)
    if not score_test:
        log.info(f"\n{Seal(out).describe()}")
        return []
    return score_study(out, rescore, again_is_done=True)
