"""The main experiment: train the models for several seeds under one protocol (train on train, choose on val,
report on test) and write one report from the runs. Every number in the report is one a run or this module
measured; nothing is typed in.

    OUT/compare.yaml          the study's options and training options: `cxrlab compare --config` reproduces it
                              (a `recipes:` entry gives one model training options of its own, e.g. MedMNIST v2's
                              for the reference resnet18)
    OUT/runs/<model>-seed<k>/ one run directory per model and seed (reused when the config matches)
    OUT/comparison.csv        one line per entry (model, model + TTA, ensemble) and seed, with its run directories
    OUT/report.md, .html      the report; figures in OUT/figures/ (embedded in the HTML)
"""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cxrlab.config import Config
from cxrlab.data.datasets import get_dataset
from cxrlab.data.task import TaskData, data_label, task_data
from cxrlab.errors import RunDirError
from cxrlab.evaluation import plots
from cxrlab.evaluation.ensemble import check_weights, combine, fit_weights
from cxrlab.evaluation.scoring import positive_view
from cxrlab.evaluation.explain import Explainer, val_grid
from cxrlab.evaluation.inference import load_trained, predict_probs, predict_probs_tta
from cxrlab.export.bench import deployed_speed
from cxrlab.report.document import Document

from cxrlab.report.study import Entry, recipe_differences, save_study, score, Study, train_accuracy_at_best, train_runs
from cxrlab.report.tables import calibration_rows, comparison_rows, grouped, ood_rows, sharing_note, speed_note, winners, write_csv
from cxrlab.report.compare_multilabel import compare_multilabel


def model_entries(runs: dict, data: TaskData, study: Study, base: Config, echo) -> list[Entry]:
    """Every run scored by the study's rules (threshold rule, bootstrap), whatever its own were: the same rules for all rows."""
    entries, speed = [], {}
    for (name, seed), run in runs.items():
        trained = load_trained(run.path)
        summary = run.read_json(run.summary)
        cfg = replace(trained.cfg, threshold=base.threshold_rule, target_sensitivity=base.target_sensitivity, n_bootstrap=base.n_bootstrap)
        curves, tta_curves = {}, {}
        for split in ("val", "test"):
            images = data.splits[split].images
            targets = data.splits[split].targets.numpy()
            plain = predict_probs(trained.model, images, cfg, trained.device)
            curves[split] = positive_view(targets, plain[:, 0], data.classes, cfg.positive)
            if study.tta > 1:
                probs = predict_probs_tta(trained.model, images, cfg, trained.device, study.tta, seed=seed, plain=plain)
                tta_curves[split] = positive_view(targets, probs[:, 0], data.classes, cfg.positive)
        if name not in speed:  # per architecture, once: the first seed's run
            echo(f"timing inference (onnxruntime): {name}")
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
            **speed[name],
            "runs": [str(run.path)],
            "ood_flagged": (summary.get("ood") or {}).get("flagged"),  # None: a run fitted before the check (cxrlab ood RUN)
        }
        val, test = score(cfg, curves)
        entries.append(Entry(name, "model", seed, val, test, curves, info))
        if tta_curves:
            tta_val, tta_test = score(cfg, tta_curves)
            tta_info = {k: info[k] for k in ("parameters", "model_size_mb", "train_accuracy", "best_epoch", "seconds_per_epoch", "train_seconds", "device", "runs")}
            entries.append(Entry(f"{name} + TTA×{study.tta}", "tta", seed, tta_val, tta_test, tta_curves, tta_info))
    return entries


def ensemble_entries(singles: list[Entry], base: Config, study: Study) -> list[Entry]:
    entries = []
    for seed in study.seeds:
        members = [next(e for e in singles if e.name == name and e.seed == seed) for name in study.models]
        val_t = members[0].curves["val"][0]
        weights = (
            fit_weights(val_t, [m.curves["val"][1] for m in members]) if study.ensemble == "fit"
            else np.full(len(members), 1 / len(members)) if study.ensemble == "equal" else check_weights(study.ensemble, study.models)
        )
        curves = {split: (members[0].curves[split][0], combine([m.curves[split][1] for m in members], weights)) for split in ("val", "test")}
        cfg = replace(base, seed=seed)
        val, test = score(cfg, curves)
        info = {
            "parameters": sum(m.info["parameters"] for m in members),
            "model_size_mb": sum(m.info["model_size_mb"] for m in members),
            "train_seconds": sum(m.info["train_seconds"] for m in members),
            "device": members[0].info["device"],
            "weights": {m.name: float(w) for m, w in zip(members, weights)},
            "runs": [r for m in members for r in m.info["runs"]],
        }
        entries.append(Entry("ensemble", "ensemble", seed, val, test, curves, info))
    return entries


def figures(out: Path, entries: list[Entry], runs: dict, study: Study, base: Config, label: str, data: TaskData) -> dict[str, list[Path]]:
    folder = out / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    first = study.seeds[0]
    shown = [e for e in entries if e.seed == first]
    made: dict[str, list[Path]] = {"overlay": [], "curves": [], "confusion": [], "grid": [], "gradcam": []}
    test_curves = {e.name: e.curves["test"] for e in shown}
    made["overlay"].append(plots.roc_overlay(test_curves, folder / "roc_test.png", f"ROC on test (seed {first})", label))
    made["overlay"].append(plots.pr_overlay(test_curves, folder / "pr_test.png", f"precision-recall on test (seed {first})", label))
    made["overlay"].append(plots.reliability(test_curves, folder / "reliability_test.png", f"reliability on test, before temperature scaling (seed {first})", label))
    for name in study.models:
        run = runs[name, first]
        for kind, source in (("curves", "curves.png"), ("confusion", "confusion_test.png"), ("grid", "val_grid.png")):
            if (run.plots / source).is_file():
                target = folder / f"{kind}_{name}.png"
                shutil.copyfile(run.plots / source, target)
                made[kind].append(target)
        made["gradcam"].append(val_grid(Explainer(load_trained(run.path, "cpu")), folder / f"gradcam_{name}.png"))
    for e in shown:
        if e.kind != "model":
            path = folder / f"confusion_{e.name.replace(' ', '').replace('+', '_').replace('×', 'x')}.png"
            made["confusion"].append(plots.confusion_matrix(e.test, data.classes, base.positive, path, f"{e.name}: confusion matrix, test", label))
    return made


def write_report(out: Path, base: Config, study: Study, entries: list[Entry], runs: dict, data: TaskData, echo) -> tuple[Path, Path]:
    label = data_label(data.provenance)
    groups = grouped(entries)
    figs = figures(out, entries, runs, study, base, label, data)
    prov = data.provenance
    doc = Document("cxrlab model comparison", warning=f"{label}: every number below describes synthetic images" if data.is_phantom else None)

    doc.heading("Data")
    counts = "; ".join(f"{split} {s.counts()[0]:,} {data.classes[0]} / {s.counts()[1]:,} {data.classes[1]}" for split, s in data.splits.items())
    doc.bullets([label, f"file `{prov['file']}`, MD5 `{prov['md5']}` (official: `{prov['official_md5']}`)", f"{data.size} px; images per split and class: {counts}"])

    doc.heading("Protocol")
    first = runs[study.models[0], study.seeds[0]].load_config()
    doc.bullets([
        "trained on train; best epoch, decision threshold and temperature chosen on val; reported on test, once",
        f"positive class: **{base.positive}**; threshold rule: `{base.threshold_rule}`"
        + (f" (target sensitivity {base.target_sensitivity})" if base.threshold_rule == "sensitivity" else "")
        + f"; best epoch by val `{base.select_metric}`",
        f"seeds {', '.join(map(str, study.seeds))}: tables give mean ± sd over seeds, and in brackets the bootstrap 95% CI "
        f"({base.n_bootstrap} resamples) of the first seed's run",
        f"up to {first.total_epochs} epochs, batch {base.batch_size}, Adam, BCE, "
        + ("ReduceLROnPlateau on val loss" if base.lr_schedule == "plateau" else f"lr x{base.lr_gamma:g} after epochs {base.lr_milestones}")
        + f", early stopping {base.early_stopping or 'off'}, BatchNorm momentum {base.bn_momentum if base.bn_momentum is not None else 'torchvision'}; "
        "learning rates per model: " + ", ".join(f"{m} {runs[m, study.seeds[0]].load_config().lr:g}" for m in study.models),
        f"ensemble: {'off' if not study.ensemble_on else 'weights fitted on val (log loss, simplex grid)' if study.ensemble == 'fit' else 'equal weights' if study.ensemble == 'equal' else 'weights ' + ', '.join(f'{w:g}' for w in study.ensemble)}; "
        f"test-time augmentation: {'off' if study.tta < 2 else f'{study.tta} views (the image, then flips, shifts up to 5%, rotations up to 10°)'}",
        f"regularisation: label smoothing {base.label_smoothing:g}, mixup alpha {base.mixup:g}, dropout {base.dropout}, "
        f"erasing p {base.aug_erasing:g}, perspective {base.aug_perspective:g}" + (f"; fine-tuning stages `{base.finetune}`" if base.finetune else ""),
    ])
    differing = recipe_differences(base, study, runs)
    if differing:
        doc.text("Models with a recipe of their own (options that differ from the shared ones above): "
                 + "; ".join(f"**{m}**: {text}" for m, text in differing.items()) + ".")
    spec = get_dataset(base.dataset)
    if spec.published and base.task == "binary":
        doc.heading(f"Published results on {spec.title} (not measured here)")
        doc.table(["method (published)", "test AUC", "test ACC"], [[m, f"{auc:.3f}", f"{acc:.3f}"] for m, auc, acc in spec.published])
        doc.text(f"Source: {spec.published_source}. cxrlab's rows above are its own measurements on the same test split; "
                 "AUC is ROC-AUC of P(positive) and ACC the accuracy at the val-chosen threshold.")
    doc.heading("Machine")
    doc.bullets([f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                 f"{torch.get_num_threads()} torch threads", "training devices: " + ", ".join(sorted({e.info['device'] for e in entries})),
                 sharing_note([e for e in entries if e.kind == "model"]), speed_note([e for e in entries if e.kind == "model"])])

    doc.heading("Comparison (test set unless marked)")
    header, rows = comparison_rows(groups)
    doc.table(header, rows)
    if study.ensemble_on:
        weights = "; ".join(f"seed {e.seed}: " + ", ".join(f"{k} {v:.2f}" for k, v in e.info["weights"].items()) for e in entries if e.kind == "ensemble")
        doc.text(f"Ensemble weights: {weights}.")
    doc.heading("Winner per criterion (mean over seeds)")
    doc.table(["criterion", "best", "value"], winners(groups))
    doc.heading("Calibration on test (temperature fitted on val)")
    doc.table(["entry", "temperature", "ECE before", "ECE after", "Brier before", "Brier after", "threshold"], calibration_rows(groups))
    ood = ood_rows([e for e in entries if e.kind == "model"])
    if ood:
        doc.heading("Out-of-distribution check (share of images given no class)")
        doc.table(*ood)
        doc.text("Each run's check (evaluation/ood.py) accepts 99% of val; the sets that are not chest X-rays are made from what "
                 "installed packages ship (evaluation/ood_sets.py). Constant images count as refused: the upload path refuses them "
                 "before the model. Targets: test ≤ 3%, synthetic ≥ 99%, real images that are not chest radiographs ≥ 95%.")
    doc.figures(figs["overlay"], "ROC, precision-recall and reliability on test, all entries of the first seed")
    doc.heading("Per model (first seed)")
    doc.figures(figs["curves"], "training curves (train and val loss, accuracy, val ROC-AUC; dotted line: best epoch)")
    doc.figures(figs["confusion"], "confusion matrices on test at the val-chosen threshold")
    doc.figures(figs["grid"], "random val images with predictions")
    doc.figures(figs["gradcam"], "Grad-CAM on random val images: where each model looked for the class it predicted "
                "(the deepest layer with a map of at least 7x7; see README)")
    doc.heading("Reproduce")
    doc.text(f"`cxrlab compare --config {out / 'compare.yaml'}` reuses these runs, or trains them again where they are missing. "
             "Each run directory holds its config, history, weights and metrics:")
    doc.table(["entry", "seed", "run directories"], [[e.name, str(e.seed), ", ".join(f"`{r}`" for r in e.info["runs"])] for e in entries])
    return doc.write(out)


def compare(base: Config, study: Study | None = None, progress: bool | None = None, echo: Callable[[str], None] = print,
            workers: int | None = None) -> list[Entry]:
    """Train (or reuse) every model for every seed (``workers`` runs at a time; default: training/runner.py's rule); score models, TTA and ensemble; write the report."""
    study = (study or Study()).validate()
    base = base.validate()
    if base.task != "binary":
        return compare_multilabel(base, study, progress, echo, workers)
    out = Path(study.out)
    out.mkdir(parents=True, exist_ok=True)
    save_study(out, base, study)
    runs = train_runs(base, study, echo, progress, workers)
    data = task_data(base)
    recorded = runs[study.models[0], study.seeds[0]].read_json(runs[study.models[0], study.seeds[0]].summary)["data_md5"]
    if recorded != data.provenance["md5"]:
        raise RunDirError(f"the data file {data.provenance['file']} is not the one the runs in {out} were trained on")
    echo("\nscoring runs" + (f", {study.tta}-view TTA" if study.tta > 1 else "") + (", ensemble" if study.ensemble_on else ""))
    entries = model_entries(runs, data, study, base, echo)
    if study.ensemble_on:
        entries += ensemble_entries([e for e in entries if e.kind == "model"], base, study)
    entries.sort(key=lambda e: ({"model": 0, "tta": 1, "ensemble": 2}[e.kind], e.name, e.seed))
    write_csv(out / "comparison.csv", entries)
    md, page = write_report(out, base, study, entries, runs, data, echo)
    header, rows = comparison_rows(grouped(entries))
    keep = [header.index(title) for title in ("entry", "seeds", "val acc", "test acc", "ROC-AUC")]
    echo("\n" + data_label(data.provenance))
    echo("\n".join("  ".join(f"{row[i]:<30}" for i in keep) for row in [header, *rows]))
    echo(f"\nwritten: {md}, {page}, {out / 'comparison.csv'}")
    return entries
