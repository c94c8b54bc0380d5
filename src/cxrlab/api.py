"""The Python API: what a notebook needs, and exactly what the command line calls.

    import cxrlab
    data = cxrlab.load_data(dataset="pneumoniamnist", download=True)          # the task's train / val / test
    run = cxrlab.train(cxrlab.Config(dataset="pneumoniamnist", download=True, epochs=10, out="runs/mnv3"))
    run                                   # provenance, best epoch, headline metrics (a table in a notebook)
    run.metrics("test"); run.history; run.predict(["xray.png"]); run.explain(["xray.png"]); run.figures["curves"]
    report = cxrlab.compare(cxrlab.Config(dataset="pneumoniamnist", download=True, epochs=3), seeds=[0, 1])
    report                                # the HTML report inline
    run = cxrlab.load_run("runs/mnv3")    # any finished run directory

Options are the Config fields, by the same names as the CLI flags and YAML keys (``--data-root`` is
``data_root``), checked by the same ``Config.validate``.
"""

from __future__ import annotations

import csv
import html
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cxrlab.config import Config, from_dict
from cxrlab.core.runs import RunDir
from cxrlab.data.datasets import get_dataset
from cxrlab.limits import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:  # the API imports torch, numpy and the rest where a function needs them: `cxrlab status` stays quick
    import numpy as np

    from cxrlab.data.task import TaskData
    from cxrlab.evaluation.predict import Prediction
    from cxrlab.report.study import Study
    from cxrlab.training.progress import StudyProgress

HEADLINE = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1", "roc_auc")


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


def train(cfg: Config | None = None, progress: bool | None = None, echo=print, **options) -> Run:
    """Train one model (``cfg`` with ``options`` on top) and return its finished Run."""
    from cxrlab.training.loop import train as train_loop

    run = train_loop(config(cfg, **options), progress=progress, echo=echo)
    return load_run(run.path)


def resume(path, progress: bool | None = None, echo=print) -> Run:
    """Continue an interrupted run from its last checkpoint."""
    from cxrlab.training.loop import resume_training

    return load_run(resume_training(path, progress=progress, echo=echo).path)


def study(section: dict | None = None, source: str = "options", **overrides) -> Study:
    """A validated study plan (models, seeds, ensemble, tta, out, recipes, holdout): a config file's ``compare:``
    section with ``overrides`` on top."""
    from cxrlab.report.study import study_from

    return study_from(section, overrides, source=source)


def compare(
    cfg: Config | None = None,
    models: list[str] | None = None,
    seeds: list[int] | None = None,
    ensemble="equal",
    tta: int = 4,
    out: str = "runs/compare",
    recipes: dict | None = None,
    holdout: int = 0,
    workers: int | None = None,
    progress: bool | None = None,
    echo=print,
    plan: Study | None = None,
    **options,
) -> Report:
    """The study: every model x seed (reused when finished), TTA and ensemble rows, the report. Returns the Report.
    ``plan`` (from ``study``) replaces models ... holdout."""
    from cxrlab.errors import ConfigError
    from cxrlab.report.compare import compare as compare_study
    from cxrlab.training.distributed import launched_by_torchrun

    if launched_by_torchrun():
        raise ConfigError("compare trains one model after another in one process; run 'torchrun ... -m cxrlab train' per model instead")
    if plan is None:
        given = {"models": models, "seeds": seeds, "ensemble": ensemble, "tta": tta, "out": out, "recipes": recipes, "holdout": holdout}
        plan = study(None, "cxrlab.compare", **{k: v for k, v in given.items() if v is not None})
    compare_study(config(cfg, **options), plan, progress=progress, workers=workers, echo=echo)
    return Report(Path(plan.out))


def cross_validate(
    cfg: Config, folds: int = 5, out="runs/cv", workers: int | None = None, progress: bool | None = None, echo=print
) -> dict:
    """k-fold cross-validation over train: one run per fold (reused when finished), each scored on val and test,
    and the folds' ensemble. Returns {'folds': [...], 'ensemble': {...}}."""
    from cxrlab.report.crossval import cross_validate as cv

    return cv(cfg, folds, out, progress=progress, echo=echo, workers=workers)


def search(
    cfg: Config,
    method: str = "optuna",
    trials: int | None = None,
    workers: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    out="runs/search",
    echo=print,
) -> dict:
    """A hyperparameter search (grid or Optuna; continued when its study exists), chosen on val. Returns the best trial."""
    from cxrlab.report.search import search as run_search

    return run_search(cfg, method, trials, workers, storage, study_name, out, echo)


def status(folder) -> StudyProgress:
    """Where a study stands (runs finished / running / left, time left), read from its folder; no torch."""
    from cxrlab.training.progress import read_status

    return read_status(folder)


def operating_point(path, echo=print, **options):
    """Choose a finished run's operating point again on its own evidence (never test): ``threshold``,
    ``rule_out_sensitivity``, ``rule_in_specificity``, ``bound_level``, ``decision``, ``prevalence``. Returns the
    OperatingPoint; refuses a target the evidence cannot show, naming the best reachable value."""
    from cxrlab.evaluation.evaluate import refit_operating_point

    return refit_operating_point(path, options, echo)


def fit_ood(path, echo=print) -> dict:
    """Fit a finished run's out-of-distribution check (again), from its weights and data, no retraining. An exported
    model carries the check in its graph, so a run already exported is exported again with the new one (and
    quantised again where it had been), and predictions keep working. Returns the check's measurements."""
    from cxrlab.evaluation.evaluate import fit_ood as fit

    report = fit(path, echo)
    run = RunDir(path)
    if run.onnx.is_file():
        load_run(path).export(quantize=run.quantization_report.is_file(), echo=echo)
    return report


def evaluate(path, split: str = "test", device: str | None = None, echo=print) -> dict:
    """Score a finished run on ``split`` again at its operating point; the metrics."""
    from cxrlab.evaluation.evaluate import evaluate_run

    return evaluate_run(path, split, device, echo)


def bench(path, batch: int = 256, echo=print) -> list[dict]:
    """Time a finished run's inference backends (PyTorch eager, channels_last, onnxruntime fp32 / INT8, predict end
    to end); writes RUN/bench.json and returns its rows."""
    from cxrlab.export.bench import bench_run

    return bench_run(path, batch, echo)


def load_run(path) -> Run:
    """A finished run directory (train, compare, cv or search wrote it), ready to inspect and use."""
    run = RunDir(path)
    run.require_finished()
    return Run(run.path)


@dataclass
class Run:
    """A finished training run: its config, data provenance, metrics, history, figures, and the model to use."""

    path: Path
    _trained: object = field(default=None, repr=False)
    _explainer: object = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        return RunDir(self.path).load_config()

    @property
    def summary(self) -> dict:
        return json.loads(RunDir(self.path).summary.read_text())

    def metrics(self, split: str = "test") -> dict:
        """Every metric of ``split`` ('val' or 'test') at the run's operating point, chosen on its evidence (never test)."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        return json.loads(RunDir(self.path).metrics(split).read_text())

    @property
    def history(self) -> Table:
        """One row per epoch (train and val loss, accuracy, val ROC-AUC, lr, seconds)."""
        with open(RunDir(self.path).history) as fh:
            return Table([{k: float(v) if k != "epoch" else int(v) for k, v in row.items()} for row in csv.DictReader(fh)])

    @property
    def plots(self) -> dict[str, Path]:
        """The run's figures as files: name -> PNG path."""
        return {p.stem: p for p in sorted(RunDir(self.path).plots.glob("*.png"))}

    @property
    def figures(self) -> dict:
        """The run's figures as matplotlib figures (the PNG files, drawn once each), name -> Figure."""
        return {name: png_figure(path) for name, path in self.plots.items()}

    def trained(self, device: str | None = None):
        """The model loaded for inference (cached; ``device`` default: the run's), served from the exported ONNX
        model when the run has one (3-5x faster on a CPU)."""
        if self._trained is None or (device and self._trained.device.type != device):
            from cxrlab.evaluation.inference import load_trained
            from cxrlab.export.runtime import served

            self._trained = served(load_trained(self.path, device))
        return self._trained

    def predict(self, images, max_pixels: int = DEFAULT_MAX_PIXELS, decision: str | None = None) -> list[Prediction]:
        """The answer for each image: a class, or 'refer' (``Prediction.answer``) for an image the out-of-distribution
        check flags or whose probability lies in the refer band; file paths (PNG, JPEG, DICOM, ...; prepared as the
        data set was made) or arrays already at the run's size (uint8 (N, S, S) or one (S, S)). ``decision``
        'single' answers every in-distribution image at the single threshold (default: the run's config)."""
        import numpy as np
        import torch

        from cxrlab.evaluation.predict import predict_files, predict_images

        trained = self.trained()
        if decision not in (None, "refer", "single"):
            raise ValueError(f"decision must be 'refer' or 'single', got {decision!r}")
        if isinstance(images, (np.ndarray, torch.Tensor)):
            batch = _as_batch(images, trained.cfg.size)
            return predict_images(trained, batch, [f"array[{i}]" for i in range(len(batch))], decision)
        if isinstance(images, (str, Path)):
            images = [images]
        return predict_files(trained, [str(p) for p in images], max_pixels, decision)

    def explainer(self):
        """Grad-CAM for this run's model (cached; on the CPU, where Grad-CAM's hooks run)."""
        from cxrlab.evaluation.explain import Explainer

        if self._explainer is None:
            self._explainer = Explainer(self.trained("cpu"))
        return self._explainer

    def explain(self, images, out: str | Path | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> list:
        """Grad-CAM overlays for image files, written to ``out`` (default: a temporary folder); one Explanation
        per file: the class explained, P(positive), the PNG, or the file's error."""
        from cxrlab.evaluation.explain import explain_files

        if isinstance(images, (str, Path)):
            images = [images]
        out = Path(out) if out else Path(tempfile.mkdtemp(prefix="cxrlab-explain-"))
        return explain_files(self.explainer(), [str(p) for p in images], out, max_pixels)

    def explain_val(self, path: str | Path, count: int = 8, seed: int = 0) -> Path:
        """A grid of random val images (fixed seed) above their Grad-CAM overlays, written to ``path``."""
        from cxrlab.evaluation.explain import val_grid

        return val_grid(self.explainer(), Path(path), count, seed)

    def export(self, quantize: bool = True, echo=print) -> Path:
        """RUN/model.onnx, checked against PyTorch; with ``quantize`` the INT8 trials (shipped only if they pay)."""
        from cxrlab.evaluation.inference import load_trained
        from cxrlab.export.onnx import export_onnx
        from cxrlab.export.quantize import quantize_run

        trained = load_trained(self.path, "cpu")
        path = export_onnx(trained, echo=echo)
        if quantize and trained.cfg.task != "binary":
            echo("INT8 quantisation is judged by binary val accuracy; skipped for the multilabel task")
        elif quantize:
            echo(
                "INT8 quantisation (shipped only if 10% faster at batch 1, within 0.5 points of fp32 val accuracy and "
                "with the same out-of-distribution decisions on 99% of images):"
            )
            quantize_run(trained, echo=echo)
        self._trained = None  # predictions switch to the exported model
        return path

    def __repr__(self) -> str:
        s = self.summary
        test = self.metrics("test")
        scores = "  ".join(f"{k} {test[k]:.3f}" for k in HEADLINE if k in test)
        return (
            f"Run({str(self.path)!r}): {s['model']} on {s['data_label']}\n  best epoch {s['best_epoch']} of {s['epochs_run']} "
            f"(val {s['select_metric']} {s['best_val_score']:.4f}); test: {scores}"
        )

    def _repr_html_(self) -> str:
        s, val = self.summary, self.metrics("val")
        rows = "".join(
            f"<tr><td>{k}</td><td>{val.get(k, float('nan')):.3f}</td><td>{v:.3f}</td></tr>"
            for k, v in self.metrics("test").items()
            if k in HEADLINE
        )
        from cxrlab.data.task import is_real

        colour = "black" if is_real(s["data_label"]) else "crimson"
        return (
            f"<div><b>{html.escape(s['model'])}</b> — <code>{html.escape(str(self.path))}</code><br>"
            f"<span style='color:{colour}'>{html.escape(s['data_label'])}</span><br>best epoch {s['best_epoch']} of {s['epochs_run']} "
            f"(val {s['select_metric']} {s['best_val_score']:.4f}), threshold {s['threshold']:.3f} chosen on held-out data, never on test"
            f"<table><tr><th>metric</th><th>val</th><th>test</th></tr>{rows}</table></div>"
        )


class Table(list):
    """Rows of dicts (no pandas needed) that print as a table; ``table["val_roc_auc"]`` is one column."""

    def __getitem__(self, key):
        if isinstance(key, str):
            return [row[key] for row in self]
        return super().__getitem__(key)

    def _repr_html_(self) -> str:
        if not self:
            return "<p>(no rows)</p>"
        head = "".join(f"<th>{html.escape(k)}</th>" for k in self[0])
        body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row.values()) + "</tr>" for row in self)
        return f"<table><tr>{head}</tr>{body}</table>"


@dataclass
class Report:
    """A compare study's output folder: report.md / report.html, comparison.csv, figures, runs."""

    path: Path

    @property
    def html_file(self) -> Path:
        return self.path / "report.html"

    @property
    def rows(self) -> Table:
        """comparison.csv: one row per entry and seed."""
        with open(self.path / "comparison.csv") as fh:
            return Table(list(csv.DictReader(fh)))

    def run(self, model: str, seed: int = 0) -> Run:
        return load_run(self.path / "runs" / f"{model}-seed{seed}")

    def __repr__(self) -> str:
        return f"Report({str(self.path)!r}): {self.html_file}"

    def _repr_html_(self) -> str:
        # The report is a whole, self-contained HTML page (figures embedded): framed so that its styles stay its own.
        page = html.escape(self.html_file.read_text(), quote=True)
        return f'<iframe srcdoc="{page}" style="width:100%;height:900px;border:1px solid #ccc"></iframe>'


def png_figure(path: Path):
    import numpy as np
    from matplotlib.figure import Figure
    from PIL import Image

    image = np.asarray(Image.open(path))
    fig = Figure(figsize=(image.shape[1] / 100, image.shape[0] / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image)
    ax.set_axis_off()
    return fig


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))


def _as_batch(images, size: int) -> np.ndarray:
    import numpy as np
    import torch

    arrays = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arrays.ndim == 2:
        arrays = arrays[None]
    if arrays.ndim != 3 or arrays.shape[1:] != (size, size) or arrays.dtype != np.uint8:
        raise ValueError(
            f"arrays must be uint8 (N, {size}, {size}) or ({size}, {size}) for this run, got {arrays.dtype} {arrays.shape}; "
            "pass file paths for images of any size"
        )
    return arrays


__all__ = ["Config", "Report", "Run", "Table", "compare", "config", "load_data", "load_run", "operating_point", "resume", "train"]
