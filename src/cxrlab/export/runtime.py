"""Serving an exported model: onnxruntime sessions with the PyTorch path's contract (uint8 images in)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cxrlab.errors import ExportError
from cxrlab.evaluation.inference import TrainedModel

FP32_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"


def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
        raise ExportError(f"onnxruntime cannot load {path}: {exc}") from None


class OnnxModel:
    """onnxruntime inference with the same contract as the PyTorch path: uint8 (N, S, S) -> logits (N, outputs).
    InferenceSession.run is safe to call from several threads at once."""

    def __init__(self, path: Path, mean: float, std: float, threads: int | None = None):
        self.path = Path(path)
        self.session = session(self.path, threads)
        self.mean, self.std = mean, std

    def logits(self, images: torch.Tensor | np.ndarray, batch: int = 512) -> np.ndarray:
        images = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        out = []
        for start in range(0, len(images), batch):
            x = (images[start : start + batch, None].astype(np.float32) / 255 - self.mean) / self.std
            out.append(self.session.run(None, {"image": x})[0])
        return np.concatenate(out) if out else np.empty((0, 1), np.float32)

    def probs(self, images) -> np.ndarray:
        return 1 / (1 + np.exp(-self.logits(images)))


def attach_runtime(trained: TrainedModel, prefer: str = "auto") -> str:
    """Serve ``trained`` from its exported file when there is one: the INT8 model (shipped only when it passed
    the quantisation rule), else the fp32 ONNX model; otherwise PyTorch. Returns the backend's name."""
    if prefer == "pytorch":
        return trained.backend
    for name, backend in ((INT8_FILE, "onnxruntime-int8"), (FP32_FILE, "onnxruntime")):
        path = trained.run.path / name
        if path.is_file():
            trained.runtime = OnnxModel(path, trained.cfg.norm_mean, trained.cfg.norm_std, trained.cfg.threads)
            trained.backend = backend
            return backend
    if prefer == "onnx":
        raise ExportError(f"{trained.run.path} has no {FP32_FILE}; run: cxrlab export {trained.run.path}")
    return trained.backend
