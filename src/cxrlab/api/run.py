"""A finished run as the API hands it out: ``load_run`` (what answers: the backend, device and threads), ``Run`` (its
config, metrics, history, figures; predict, explain, export), the compare study's ``Report``, and ``Table``."""

from __future__ import annotations

import csv
import html
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cxrlab.config import Config
from cxrlab.console import logger
from cxrlab.core.runs import RunDir
from cxrlab.limits import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    import numpy as np

    from cxrlab.api.entry import StudyEntry
    from cxrlab.evaluation.predict import Prediction

log = logger(__name__)
HEADLINE = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1", "roc_auc")


BACKENDS = ("auto", "pytorch", "onnx")


def load_run(path, backend: str = "auto", device: str | None = None, threads: int | None = None) -> Run:
    """A finished run directory (train, compare, cv or search wrote it), ready to inspect and use. Its predictions,
    explanations and check come from ``backend``: 'auto' (the exported model when the run has one: the INT8 model
    where it shipped, else fp32 ONNX; otherwise PyTorch), 'onnx' (refused without an export) or 'pytorch'.
    ``device``: default the run's. ``threads``: for onnxruntime (default: one per core); loading changes no
    process-wide setting."""
    from cxrlab.errors import ConfigError

    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be at least 1 (or unset: one per core), got {threads}")
    run = RunDir(path)
    run.require_finished()
    return Run(run.path, backend, device, threads)


@dataclass
class Run:
    """A finished training run: its config, data provenance, metrics, history, figures, and the model to use."""

    path: Path
    backend: str = "auto"  # what answers: see load_run
    device: str | None = None
    threads: int | None = None
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
        path = RunDir(self.path).metrics(split)
        if split == "test" and not path.is_file() and self.sealed:
            from cxrlab.errors import RunDirError

            raise RunDirError(f"{self.path} is a sealed run (a study's): its test is scored for the study, once, by `cxrlab score`")
        return json.loads(path.read_text())

    @property
    def sealed(self) -> bool:
        """Whether the run never loaded test (a study's run: test is scored for the study)."""
        return bool(self.config.sealed)

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
        """The model loaded for inference from the run's backend (cached; ``device`` default: the one the run was
        loaded with, else the run's own); ``.backend`` names what answers."""
        device = device or self.device
        if self._trained is None or (device and self._trained.device.type != device):
            from cxrlab.evaluation.inference import load_trained
            from cxrlab.export.runtime import served

            self._trained = served(load_trained(self.path, device, self.threads), self.backend)
        return self._trained

    def decode(self, data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS):
        """Untrusted image or DICOM bytes -> (uint8 (S, S) prepared as the data set was made, the pixels decoded);
        bounded by ``max_pixels`` before decoding."""
        return self.trained().decode(data, name, max_pixels)

    def explain_image(self, image, name: str = "image"):
        """One prepared image (uint8 (S, S)) -> (Explanation, overlay PNG bytes or None when the check refers it):
        the class and check decided as ``predict`` decides them."""
        from cxrlab.evaluation.explain import explain_image

        return explain_image(self.explainer(), image, name)

    def predict(self, images, max_pixels: int = DEFAULT_MAX_PIXELS, decision: str | None = None) -> list[Prediction]:
        """The answer for each image: a class, or 'refer' (``Prediction.answer``) for an image the out-of-distribution
        check flags or whose probability lies in the refer band; file paths (PNG, JPEG, DICOM, ...; prepared as the
        data set was made) or arrays already at the run's size (uint8 (N, S, S) or one (S, S)). ``decision``
        'single' answers every in-distribution image at the single threshold (default: the run's config)."""
        return answers(self.trained(), images, max_pixels, decision)

    def explainer(self):
        """Grad-CAM for this run's model (cached; on the CPU, where Grad-CAM's hooks run)."""
        from cxrlab.evaluation.explain import Explainer

        if self._explainer is None:
            self._explainer = Explainer(self.trained("cpu"))
        return self._explainer

    def explain(self, images, out: str | Path | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> list:
        """Grad-CAM overlays for image files, written to ``out`` (default: a temporary folder); one Explanation
        per file: the class explained, P(positive), the PNG, or the file's error."""
        return explain_paths(self.explainer(), images, out, max_pixels)

    def explain_val(self, path: str | Path, count: int = 8, seed: int = 0) -> Path:
        """A grid of random val images (fixed seed) above their Grad-CAM overlays, written to ``path``."""
        from cxrlab.evaluation.explain import val_grid

        return val_grid(self.explainer(), Path(path), count, seed)

    def export(self, quantize: bool = True) -> Path:
        """RUN/model.onnx, checked against PyTorch; with ``quantize`` the INT8 trials (shipped only if they pay)."""
        from cxrlab.evaluation.inference import load_trained
        from cxrlab.export.onnx import export_onnx
        from cxrlab.export.quantize import quantize_run

        trained = load_trained(self.path, "cpu")
        path = export_onnx(trained)
        if quantize and trained.cfg.task != "binary":
            log.info("INT8 quantisation is judged by binary val accuracy; skipped for the multilabel task")
        elif quantize:
            log.info(
                "INT8 quantisation (shipped only if 10% faster at batch 1, within 0.5 points of fp32 val accuracy and "
                "with the same out-of-distribution decisions on 99% of images):"
            )
            quantize_run(trained)
        self._trained = None  # predictions switch to the exported model
        return path

    def __repr__(self) -> str:
        s = self.summary
        split = "val" if self.sealed else "test"
        scored = self.metrics(split)
        scores = "  ".join(f"{k} {scored[k]:.3f}" for k in HEADLINE if k in scored)
        return (
            f"Run({str(self.path)!r}): {s['model']} on {s['data_label']}\n  best epoch {s['best_epoch']} of {s['epochs_run']} "
            f"(val {s['select_metric']} {s['best_val_score']:.4f}); {split}: {scores}" + ("  (test sealed)" if self.sealed else "")
        )

    def _repr_html_(self) -> str:
        s, val = self.summary, self.metrics("val")
        test = {} if self.sealed else self.metrics("test")
        rows = "".join(
            f"<tr><td>{k}</td><td>{val[k]:.3f}</td><td>{f'{test[k]:.3f}' if test else 'sealed'}</td></tr>" for k in HEADLINE if k in val
        )
        from cxrlab.data.task import is_real

        colour = "black" if is_real(s["data_label"]) else "crimson"
        return (
            f"<div><b>{html.escape(s['model'])}</b> — <code>{html.escape(str(self.path))}</code><br>"
            f"<span style='color:{colour}'>{html.escape(s['data_label'])}</span><br>best epoch {s['best_epoch']} of {s['epochs_run']} "
            f"(val {s['select_metric']} {s['best_val_score']:.4f}), threshold {s['threshold']:.3f} chosen on held-out data, never on test"
            f"<table><tr><th>metric</th><th>val</th><th>test</th></tr>{rows}</table></div>"
        )


def answers(trained, images, max_pixels: int = DEFAULT_MAX_PIXELS, decision: str | None = None) -> list[Prediction]:
    """What ``Run.predict`` and ``StudyEntry.predict`` answer: one Prediction per file or array image."""
    import numpy as np
    import torch

    from cxrlab.evaluation.predict import predict_files, predict_images

    if decision not in (None, "refer", "single"):
        raise ValueError(f"decision must be 'refer' or 'single', got {decision!r}")
    if isinstance(images, (np.ndarray, torch.Tensor)):
        batch = _as_batch(images, trained.cfg.size)
        return predict_images(trained, batch, [f"array[{i}]" for i in range(len(batch))], decision)
    if isinstance(images, (str, Path)):
        images = [images]
    return predict_files(trained, [str(p) for p in images], max_pixels, decision)


def explain_paths(explainer, images, out: str | Path | None, max_pixels: int, answerer=None) -> list:
    """Grad-CAM overlays for image files (one path or several), written to ``out`` (default: a temporary folder)."""
    from cxrlab.evaluation.explain import explain_files

    if isinstance(images, (str, Path)):
        images = [images]
    out = Path(out) if out else Path(tempfile.mkdtemp(prefix="cxrlab-explain-"))
    return explain_files(explainer, [str(p) for p in images], out, max_pixels, answerer)


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

    def entry(self, name: str | None = None, seed: int | None = None) -> StudyEntry:
        """One entry as a deployable unit (default: the headline entry, first seed): see ``load_entry``."""
        from cxrlab.api.entry import load_entry

        return load_entry(self.path, name, seed)

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
