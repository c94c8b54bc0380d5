"""Serving an exported model: onnxruntime sessions with the PyTorch path's contract (uint8 images in)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cxrlab.errors import ExportError
from cxrlab.evaluation.inference import TrainedModel
from cxrlab.evaluation.ood import check_digest


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
    """onnxruntime inference with the same contract as the PyTorch path: uint8 (N, S, S) -> logits (N, outputs), and
    the out-of-distribution check's scores when the graph holds it (output 'ood_score', export/onnx.py).
    InferenceSession.run is safe to call from several threads at once."""

    def __init__(self, path: Path, mean: float, std: float, threads: int | None = None):
        self.path = Path(path)
        self.session = session(self.path, threads)
        self.mean, self.std = mean, std
        self.has_check = "ood_score" in {o.name for o in self.session.get_outputs()}
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def outputs(self, images: torch.Tensor | np.ndarray, batch: int = 512) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 (N, S, S) -> (logits (N, outputs), scores (N,) or None)."""
        images = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        names = ["logit", "ood_score"] if self.has_check else ["logit"]
        logits, scores = [], []
        for start in range(0, len(images), batch):
            x = (images[start : start + batch, None].astype(np.float32) / 255 - self.mean) / self.std
            out = self.session.run(names, {"image": x})
            logits.append(out[0])
            scores.append(out[-1])
        if not logits:
            return np.empty((0, 1), np.float32), (np.empty(0, np.float32) if self.has_check else None)
        return np.concatenate(logits), (np.concatenate(scores) if self.has_check else None)

    def logits(self, images, batch: int = 512) -> np.ndarray:
        return self.outputs(images, batch)[0]

    def probs(self, images) -> np.ndarray:
        return 1 / (1 + np.exp(-self.logits(images)))

    def predict(self, images) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, check scores or None): TrainedModel.predict's contract."""
        logits, scores = self.outputs(images)
        return 1 / (1 + np.exp(-logits)), scores


def served(trained: TrainedModel, prefer: str = "auto") -> TrainedModel:
    """``trained`` as it is served: from its exported file when there is one (the INT8 model, shipped only when it
    passed the quantisation rule, else the fp32 ONNX model), otherwise from PyTorch; ``.backend`` names which. An
    exported file whose out-of-distribution check is not the run's (fitted again since) is refused: export again."""
    if prefer == "pytorch":
        return trained
    for path, backend in ((trained.run.int8_onnx, "onnxruntime-int8"), (trained.run.onnx, "onnxruntime")):
        if path.is_file():
            model = OnnxModel(path, trained.cfg.norm_mean, trained.cfg.norm_std, trained.threads)
            if model.has_check and (trained.ood is None or model.metadata.get("ood_digest") != check_digest(trained.run.path)):
                raise ExportError(
                    f"{path} holds an out-of-distribution check other than {trained.run.path}'s ood.npz "
                    f"(fitted again or removed since the export); run: cxrlab export {trained.run.path}"
                )
            return replace(trained, runtime=model, backend=backend)
    if prefer == "onnx":
        raise ExportError(f"{trained.run.path} has no {trained.run.onnx.name}; run: cxrlab export {trained.run.path}")
    return trained
