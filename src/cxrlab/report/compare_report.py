"""compare's report: report.md and report.html, section by section, from the study's entries and runs. Every
number is one a run or the study measured."""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from cxrlab.config import Config, Study
from cxrlab.data.datasets import get_dataset
from cxrlab.data.task import TaskData, data_label
from cxrlab.evaluation import plots
from cxrlab.evaluation.explain import Explainer, val_grid
from cxrlab.evaluation.inference import load_trained
from cxrlab.report.claims import (
    BAND_HEADER,
    COVERAGE_HEADER,
    HEADLINE_RULE,
    OPERATING_POINT_HEADER,
    PAIRED_KEYS,
    anchor_rows,
    band_rows,
    bonferroni_level,
    coverage_rows,
    evidence_curve,
    headline,
    headline_rows,
    operating_point_rows,
    paired_rows,
    prevalence_note,
    test_intervals,
)
from cxrlab.report.document import Document
from cxrlab.report.study import Entry, recipe_differences
from cxrlab.report.tables import (
    INTERVAL_KEYS,
    calibration_rows,
    comparison_rows,
    grouped,
    ood_rows,
    sharing_note,
    speed_note,
    winners,
)


@dataclass
class ReportContext:
    """What every section reads: the study, its entries grouped by name, the headline entry and the evidence."""

    out: Path
    base: Config
    study: Study
    entries: list[Entry]
    runs: dict
    data: TaskData
    label: str
    groups: dict
    named: str
    evidence_auc: dict
    evidence: str
    held_out: bool
    figs: dict
    intervals: dict
    seal: str  # how test was kept and scored (report/choices.py)


def write_report(
    out: Path, base: Config, study: Study, entries: list[Entry], runs: dict, data: TaskData, named: str, seal: str
) -> tuple[Path, Path]:
    """The report of a scored study: ``named`` is the headline entry its choices file names, ``seal`` how test was
    kept and scored (report/choices.py)."""
    label = data_label(data.provenance)
    groups = grouped(entries)
    _, evidence_auc = headline(groups)
    held_out = any("fold" in e.curves for e in entries)
    c = ReportContext(
        out,
        base,
        study,
        entries,
        runs,
        data,
        label,
        groups,
        named,
        evidence_auc,
        "the held-out fold of train and val" if held_out else "val",
        held_out,
        figures(out, entries, runs, study, base, label, data),
        {name: test_intervals(g, INTERVAL_KEYS, base.n_bootstrap, base.seed) for name, g in groups.items()},
        seal,
    )
    doc = Document(
        "cxrlab model comparison", warning=f"{label}: every number below describes synthetic images" if data.is_phantom else None
    )
    for section in (headline_section, data_section, protocol_section, machine_section, comparison_section, points_section, rest_section):
        section(doc, c)
    return doc.write(out)


def headline_section(doc: Document, c: ReportContext) -> None:
    """The entry the fixed rule names, on test, with its intervals."""
    base, data, groups, named, evidence = c.base, c.data, c.groups, c.named, c.evidence
    doc.heading(f"Headline: {named}")
    doc.text(
        f"Named in `choices.json`, written before test was read, by the rule {HEADLINE_RULE} "
        f"({', '.join(f'{k} {v:.4f}' for k, v in c.evidence_auc.items())}). "
        f"Test, mean over {len(groups[named])} seeds [95% interval over seeds and test resampling], at the single threshold "
        f"(`{base.threshold_rule}` on {evidence}); test prevalence {data.splits['test'].targets.numpy().mean():.1%} {base.positive}."
    )
    doc.table(["on test", named], headline_rows(groups[named], base.n_bootstrap, base.seed))


def data_section(doc: Document, c: ReportContext) -> None:
    """The file, its provenance and the images per split and class."""
    data, label = c.data, c.label
    prov = c.data.provenance
    doc.heading("Data")
    counts = "; ".join(
        f"{split} {s.counts()[0]:,} {data.classes[0]} / {s.counts()[1]:,} {data.classes[1]}" for split, s in data.splits.items()
    )
    doc.bullets(
        [
            label,
            f"file `{Path(prov['file']).name}`, MD5 `{prov['md5']}` (official: `{prov['official_md5']}`)",
            f"{data.size} px; images per split and class: {counts}",
        ]
    )


def protocol_section(doc: Document, c: ReportContext) -> None:
    """How the runs were trained and chosen; a model's own recipe."""
    base, study, runs, evidence = c.base, c.study, c.runs, c.evidence
    doc.heading("Protocol")
    first = runs[study.models[0], study.seeds[0]].load_config()
    fold = (
        f"trained on {study.holdout - 1} of {study.holdout} folds of train; each seed s holds out fold s mod {study.holdout} "
        "(stratified), on which the best epoch is chosen"
        if study.holdout
        else "trained on train; best epoch chosen on val"
    )
    doc.bullets(
        [
            f"{fold}; operating point and temperature chosen on {evidence}; reported on test, once",
            f"{c.seal}; every choice (operating points, temperatures, TTA views, ensemble weights, the headline "
            "entry) is in `choices.json`",
            f"positive class: **{base.positive}**; single threshold rule: `{base.threshold_rule}`"
            + (f" (target sensitivity {base.target_sensitivity})" if base.threshold_rule in ("sensitivity", "sensitivity-bound") else "")
            + f"; refer band: rule-out where sensitivity ≥ {base.rule_out_sensitivity:g} and rule-in where specificity ≥ "
            f"{base.rule_in_specificity:g}, each by a one-sided {base.bound_level:.0%} Clopper-Pearson lower bound on {evidence}; "
            f"best epoch by `{base.select_metric}`",
            f"seeds {', '.join(map(str, study.seeds))}: tables give mean ± sd over seeds, and in brackets the 95% interval over seeds "
            f"and test resampling ({base.n_bootstrap} resamples, every seed's run on each)",
            f"up to {first.total_epochs} epochs, batch {base.batch_size}, Adam, BCE, "
            + (
                "ReduceLROnPlateau on val loss"
                if base.lr_schedule == "plateau"
                else f"lr x{base.lr_gamma:g} after epochs {base.lr_milestones}"
            )
            + f", early stopping {base.early_stopping or 'off'}, BatchNorm momentum "
            f"{base.bn_momentum if base.bn_momentum is not None else 'torchvision'}; "
            "learning rates per model: " + ", ".join(f"{m} {runs[m, study.seeds[0]].load_config().lr:g}" for m in study.models),
            f"ensemble: {ensemble_words(study)}; test-time augmentation: {tta_words(study)}",
            f"regularisation: label smoothing {base.label_smoothing:g}, mixup alpha {base.mixup:g}, dropout {base.dropout}, "
            f"erasing p {base.aug_erasing:g}, perspective {base.aug_perspective:g}"
            + (f"; fine-tuning stages `{base.finetune}`" if base.finetune else ""),
        ]
    )
    differing = recipe_differences(base, study, runs)
    if differing:
        doc.text(
            "Models with a recipe of their own (options that differ from the shared ones above): "
            + "; ".join(f"**{m}**: {text}" for m, text in differing.items())
            + "."
        )


def machine_section(doc: Document, c: ReportContext) -> None:
    """Where the runs trained, and how many shared the machine."""
    entries = c.entries
    doc.heading("Machine")
    doc.bullets(
        [
            f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads",
            "training devices: " + ", ".join(sorted({e.info["device"] for e in entries})),
            sharing_note([e for e in entries if e.kind == "model"]),
            speed_note([e for e in entries if e.kind == "model"]),
        ]
    )


def comparison_section(doc: Document, c: ReportContext) -> None:
    """Every entry on test; the paired differences; the published results, like for like."""
    base, study, entries, groups, named, intervals = c.base, c.study, c.entries, c.groups, c.named, c.intervals
    doc.heading("Comparison (test set unless marked)")
    header, rows = comparison_rows(groups, intervals)
    doc.table(header, rows)
    doc.text(
        "`test acc` is at the single threshold chosen on the evidence; `test acc at 0.5` at the published convention; "
        "`referred` is the share of test images in the refer band and `answered acc` the accuracy on the rest."
    )
    if study.ensemble_on:
        weights = "; ".join(
            f"seed {e.seed}: " + ", ".join(f"{k} {v:.2f}" for k, v in e.info["weights"].items()) for e in entries if e.kind == "ensemble"
        )
        doc.text(f"Ensemble weights: {weights}.")
    if len(groups) > 1:
        doc.heading(f"Paired comparisons on test: {named} against each entry")
        doc.table(
            ["difference", *(t for _, t in PAIRED_KEYS), "seeds ahead in ROC-AUC"], paired_rows(groups, named, base.n_bootstrap, base.seed)
        )
        shown = (len(groups) - 1) * len(PAIRED_KEYS)
        doc.text(
            "Mean over seeds of the difference on the same test images, [95% interval over a two-stage bootstrap: the seeds "
            "drawn again with replacement, then the shared test images]; ** where the interval excludes 0, and only those "
            f"differences are called better or worse. {shown} differences are shown, so about {shown / 20:.1f} would exclude 0 "
            f"by chance at 95% if no entry differed: †† marks those whose interval at {bonferroni_level(shown):.2%} (Bonferroni "
            "over all of them) excludes 0 too. The last column: in how many seeds the named entry's ROC-AUC is the higher."
        )
    spec = get_dataset(base.dataset)
    if spec.published and base.task == "binary":
        doc.heading(f"Published results on {spec.title}, like for like")
        doc.table(["method", "test AUC", "test ACC", "convention"], anchor_rows(spec.published, groups))
        doc.text(
            f"Source: {spec.published_source}. Every published figure on this split is listed, the highest first; they are "
            "the authors' measurements, not repeated here. ACC is compared at their convention (0.5); AUC needs no threshold."
        )


def points_section(doc: Document, c: ReportContext) -> None:
    """The operating points, chosen without test, and risk against coverage."""
    base, groups, named, evidence, held_out, figs = c.base, c.groups, c.named, c.evidence, c.held_out, c.figs
    doc.heading("Operating points: chosen without test")
    doc.table(OPERATING_POINT_HEADER, operating_point_rows(groups))
    doc.text(
        f"Thresholds over seeds (min–max) as chosen on {evidence}. "
        + (
            "The val columns check the rule: the operating point chosen on the held-out fold alone, applied to val, which it never "
            "saw (targets: sensitivity, and specificity, at least the targets above among answered images)."
            if held_out
            else "Val columns need a held-out fold (`--holdout K`): without one, val is the evidence itself."
        )
    )
    doc.text(prevalence_note(groups[named], base.positive))
    doc.heading("Refer band outcomes: on the evidence → on test")
    doc.table(BAND_HEADER, band_rows(groups, base.n_bootstrap, base.seed))
    doc.text(
        f"Each cell: on {evidence} (mean over seeds) → on test (mean over seeds [95% interval over seeds and test resampling]). "
        "Rule-out: images below the rule-out threshold are answered with the negative class (sensitivity: positives kept "
        "above it; NPV: negatives among those ruled out). Rule-in: images at or above the rule-in threshold are answered with "
        "the positive class (specificity: negatives kept below it; PPV: positives among those ruled in). Confident errors are "
        "answered outside the band: normals ruled in, positives ruled out. comparison.csv holds every seed's values."
    )
    doc.heading("Risk against coverage")
    doc.table(COVERAGE_HEADER, coverage_rows(groups))
    doc.figures(
        figs["coverage"],
        f"error among answered images against the share answered (the least certain referred first), on {evidence} "
        "and on test, first seed; dots: the refer band",
    )


def rest_section(doc: Document, c: ReportContext) -> None:
    """Winners, calibration, the out-of-distribution check, the figures, how to reproduce."""
    entries, groups, figs = c.entries, c.groups, c.figs
    doc.heading("Winner per criterion that needs no test resampling (mean over seeds)")
    doc.table(["criterion", "best", "value"], winners(groups))
    doc.heading("Calibration on test (temperature fitted on the evidence)")
    doc.table(["entry", "temperature", "ECE before", "ECE after", "Brier before", "Brier after", "threshold"], calibration_rows(groups))
    ood = ood_rows([e for e in entries if e.kind == "model"])
    if ood:
        doc.heading("Out-of-distribution check (share of images referred without a class)")
        doc.table(*ood)
        doc.text(
            "Each run's check (evaluation/ood.py) accepts 99% of val; the sets that are not chest X-rays are made from what "
            "installed packages ship (evaluation/ood_sets.py). Constant images count as refused: the upload path refuses them "
            "before the model. Targets: test ≤ 3%, synthetic ≥ 99%, real images that are not chest radiographs ≥ 95%."
        )
    doc.figures(figs["overlay"], "ROC, precision-recall and reliability on test, all entries of the first seed")
    doc.heading("Per model (first seed)")
    doc.figures(figs["curves"], "training curves (train and val loss, accuracy, val ROC-AUC; dotted line: best epoch)")
    doc.figures(figs["confusion"], "confusion matrices on test at the single threshold, every entry")
    doc.figures(figs["grid"], "random val images with predictions")
    doc.figures(
        figs["gradcam"],
        "Grad-CAM on random val images: where each model looked for the class it predicted "
        "(the deepest layer with a map of at least 7x7; see README)",
    )
    doc.heading("Reproduce")
    doc.text(
        "`cxrlab compare --config compare.yaml` (in this folder) reuses these runs, or trains them again where they are missing. "
        "Each run directory holds its config, history, weights and metrics:"
    )
    doc.table(["entry", "seed", "run directories"], [[e.name, str(e.seed), ", ".join(f"`{r}`" for r in e.info["runs"])] for e in entries])


def figures(out: Path, entries: list[Entry], runs: dict, study: Study, base: Config, label: str, data: TaskData) -> dict[str, list[Path]]:
    folder = out / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    first = study.seeds[0]
    shown = [e for e in entries if e.seed == first]
    made: dict[str, list[Path]] = {"overlay": [], "curves": [], "confusion": [], "grid": [], "gradcam": [], "coverage": []}
    test_curves = {e.name: e.curves["test"] for e in shown}
    for split, name in (("evidence", "risk_coverage_evidence.png"), ("test", "risk_coverage_test.png")):
        curves = {e.name: (*(evidence_curve(e) if split == "evidence" else e.curves["test"]), e.test["threshold"]) for e in shown}
        bands = {
            e.name: (1 - e.test["referred"], 1 - e.test["answered_accuracy"]) for e in shown if split == "test" and "referred" in e.test
        }
        made["coverage"].append(
            plots.risk_coverage(curves, folder / name, f"risk against coverage on {split} (seed {first})", label, bands)
        )
    made["overlay"].append(plots.roc_overlay(test_curves, folder / "roc_test.png", f"ROC on test (seed {first})", label))
    made["overlay"].append(plots.pr_overlay(test_curves, folder / "pr_test.png", f"precision-recall on test (seed {first})", label))
    made["overlay"].append(
        plots.reliability(
            test_curves, folder / "reliability_test.png", f"reliability on test, before temperature scaling (seed {first})", label
        )
    )
    for name in study.models:
        run = runs[name, first]
        for kind, source in (("curves", "curves.png"), ("grid", "val_grid.png")):  # a sealed run has no test figure
            if (run.plots / source).is_file():
                target = folder / f"{kind}_{name}.png"
                shutil.copyfile(run.plots / source, target)
                made[kind].append(target)
        made["gradcam"].append(val_grid(Explainer(load_trained(run.path, "cpu")), folder / f"gradcam_{name}.png"))
    for e in shown:
        path = folder / f"confusion_{e.name.replace(' ', '').replace('+', '_').replace('×', 'x')}.png"
        made["confusion"].append(
            plots.confusion_matrix(e.test, data.classes, base.positive, path, f"{e.name}: confusion matrix, test", label)
        )
    return made


def ensemble_words(study: Study) -> str:
    if not study.ensemble_on:
        return "off"
    if study.ensemble in ("fit", "equal"):
        return "weights fitted on val (log loss, simplex grid)" if study.ensemble == "fit" else "equal weights"
    return "weights " + ", ".join(f"{w:g}" for w in study.ensemble)


def tta_words(study: Study) -> str:
    return "off" if study.tta < 2 else f"{study.tta} views (the image, then flips, shifts up to 5%, rotations up to 10°)"
