"""Running a model over images: large batches, no autograd, probabilities out."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cxrlab.config import Config
from cxrlab.core.checkpoint import load_weights
from cxrlab.core.device import autocast, setup_device
from cxrlab.core.runs import RunDir
from cxrlab.data.augment import AugmentSettings, eval_batch, normalize, resample, to_float, view_grid
from cxrlab.data.datasets import get_dataset
from cxrlab.data.images import decode_full, load_image, prepare
from cxrlab.data.task import is_phantom
from cxrlab.evaluation.ood import OODCheck, probe_outputs
from cxrlab.evaluation.operating_point import OperatingPoint
from cxrlab.evaluation.scoring import negative_class
from cxrlab.limits import DEFAULT_MAX_PIXELS
from cxrlab.models.probe import FeatureProbe
from cxrlab.models.registry import model_from_config

View = Callable[[torch.Tensor], torch.Tensor]  # uint8 (n, S, S) batch -> normalised float (n, 1, S, S) on the device


def predict_logits(model: nn.Module, images: torch.Tensor, cfg: Config, device: torch.device, view: View | None = None) -> torch.Tensor:
    """uint8 (N, S, S) -> float logits (N, outputs) on the CPU. Leaves the model in eval mode.
    ``view`` replaces plain normalisation (test-time augmentation)."""
    model.eval()
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    view = view or (lambda batch: eval_batch(batch, cfg.norm_mean, cfg.norm_std, device))
    out = []
    with torch.inference_mode(), autocast(cfg, device):
        for start in range(0, len(images), cfg.eval_batch_size):
            x = view(images[start : start + cfg.eval_batch_size])
            out.append(model(x.contiguous(memory_format=memory_format)).float().cpu())
    return torch.cat(out) if out else torch.empty(0, cfg.num_outputs)


def plain_copy(model: nn.Module, device: torch.device | str | None = None, channels_last: bool = False) -> nn.Module:
    """A float32 eval-mode copy (for Grad-CAM, export, quantisation, benchmarks) that leaves the served model as it is."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return copy.deepcopy(model).float().to(device, memory_format=memory_format).eval()


def predict_probs(model: nn.Module, images: torch.Tensor, cfg: Config, device: torch.device) -> np.ndarray:
    return torch.sigmoid(predict_logits(model, images, cfg, device)).numpy()


# Test-time views: small flips, shifts and rotations only; no intensity changes, which move the decision.
TTA_SETTINGS = AugmentSettings(rotation=10.0, translate=0.05, hflip=0.5)


def predict_probs_tta(
    model: nn.Module, images: torch.Tensor, cfg: Config, device: torch.device, views: int, seed: int = 0, plain: np.ndarray | None = None
) -> np.ndarray:
    """Mean probability over ``views`` views: the image itself (``plain``, when the caller has predicted it already),
    then views-1 geometric views, view v one transform drawn with seed (``seed``, v) and applied to every image alike:
    an image's answer never depends on the other images of the call."""
    total = predict_probs(model, images, cfg, device) if plain is None else plain
    for v in range(1, views):
        grid = view_grid(cfg.size, TTA_SETTINGS, torch.Generator().manual_seed(seed * 1000 + v))

        def view(batch: torch.Tensor, grid: torch.Tensor = grid) -> torch.Tensor:
            return normalize(resample(to_float(batch, device), grid), cfg.norm_mean, cfg.norm_std)

        total = total + torch.sigmoid(predict_logits(model, images, cfg, device, view)).numpy()
    return total / views


@dataclass
class TrainedModel:
    """A finished run loaded for inference: its config, model, decision threshold and class names."""

    run: RunDir
    cfg: Config
    model: nn.Module
    device: torch.device
    threshold: float
    classes: list[str]
    is_phantom: bool
    temperature: float = 1.0  # fitted on val; binary task only
    runtime: object | None = None  # an exported model that serves predict() and probs() instead of PyTorch (export.runtime.served)
    backend: str = "pytorch"
    ood: OODCheck | None = None  # the run's out-of-distribution check; None for runs finished before it existed
    # The model and its feature blocks in one pass, for the check. Built once at load: tracing switches the model
    # between train and eval mode, which must not happen while another thread predicts.
    probe: FeatureProbe | None = None
    point: OperatingPoint | None = None  # binary task: the single threshold and the refer band (operating_point.json)
    threads: int | None = None  # onnxruntime sessions' threads: the caller's choice (None: one per core)

    def predict(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 (N, S, S) -> (probabilities (N, outputs), the check's scores (N,), flagged above ``ood.threshold``,
        or None for a run without a check), from one pass; from the exported model when one is attached."""
        if self.runtime is not None:
            probs, scores = self.runtime.predict(images)
            if scores is not None or self.ood is None:
                return probs, scores
            return probs, self.ood.scores(probe_outputs(self.probe, images, self.cfg, self.device)[1])  # exported without it
        if self.ood is None:
            return predict_probs(self.model, images, self.cfg, self.device), None
        logits, layers = probe_outputs(self.probe, images, self.cfg, self.device)
        return 1 / (1 + np.exp(-logits)), self.ood.scores(layers)

    def ood_scores(self, images: torch.Tensor) -> np.ndarray | None:
        return self.predict(images)[1]

    def probs(self, images: torch.Tensor) -> np.ndarray:
        """uint8 (N, S, S) -> probabilities (N, outputs), from the exported model when one is attached."""
        if self.runtime is not None:
            return self.runtime.probs(images)
        return predict_probs(self.model, images, self.cfg, self.device)

    @property
    def answered_by(self) -> str:
        """What answers, in words: the run and the backend."""
        return f"run {self.run.path.name} ({self.cfg.model}), {self.backend}"

    @property
    def preprocess(self) -> str:
        """How a full-size image becomes square for this run's data set (data/datasets.py)."""
        return get_dataset(self.cfg.dataset).preprocess

    @property
    def negative(self) -> str:
        """The class that is not the positive one (binary task)."""
        return negative_class(self.classes, self.cfg.positive)

    @property
    def dataset_title(self) -> str:
        return get_dataset(self.cfg.dataset).title

    def decode(self, data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, int]:
        """Image or DICOM bytes -> (uint8 (S, S) prepared as the run's data set was made, the pixels decoded: what a
        request's budget counts)."""
        gray = decode_full(data, name, max_pixels, self.cfg.size)
        return prepare(gray, self.cfg.size, self.preprocess), int(gray.size)

    def load(self, path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """An image or DICOM file -> uint8 (S, S), prepared as the run's data set was made."""
        return load_image(path, self.cfg.size, self.preprocess, max_pixels)


def load_trained(run_path, device: str | None = None, threads: int | None = None) -> TrainedModel:
    """A finished run ready for inference. ``threads``: for its onnxruntime sessions (default: onnxruntime's, one per
    core); the training's thread count (a run trained side by side saves 1) is not inherited, and torch's
    process-wide thread count is left as the caller set it."""
    run = RunDir(run_path)
    summary = run.require_finished()
    cfg = run.load_config()
    dev = setup_device(device or cfg.device)
    model = model_from_config(cfg, initial_weights=False)
    load_weights(model, run.weights)
    model = model.to(dev, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format).eval()
    ood = OODCheck.load(run.path)
    return TrainedModel(
        run,
        cfg,
        model,
        dev,
        float(summary["threshold"]),
        summary["classes"],
        is_phantom(run.read_json(run.data)),
        float(summary.get("temperature", 1.0)),
        ood=ood,
        probe=FeatureProbe(model) if ood is not None else None,
        point=load_operating_point(run, summary) if cfg.task == "binary" else None,
        threads=threads,
    )


LEGACY_POINT = "trained before operating points: its single threshold only (cxrlab operating-point RUN chooses a refer band)"


def load_operating_point(run: RunDir, summary: dict) -> OperatingPoint:
    """The run's operating point; for a run finished before they existed, its single threshold, saying so."""
    if run.operating_point.is_file():
        return OperatingPoint.from_dict(run.read_json(run.operating_point))
    return OperatingPoint(float(summary["threshold"]), summary.get("threshold_rule", "0.5"), evidence="val", band_error=LEGACY_POINT)
