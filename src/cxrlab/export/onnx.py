"""ONNX export of a finished run, verified against PyTorch, and onnxruntime inference.

    RUN/model.onnx      input 'image' float (batch, 1, S, S), normalised as in training; output 'logit' (batch, outputs)
    RUN/export.json     how the file was checked: images, tolerance, largest differences, opset, versions

The check runs the trained model and the ONNX file on the run's val images and compares logits with a relative
tolerance. An untrained or collapsed model can give (nearly) the same output for every image, which any broken
export would match too, so a model whose outputs do not vary across the val images is refused, not passed.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrlab.data.task import task_data
from cxrlab.errors import ExportError
from cxrlab.evaluation.inference import TrainedModel, plain_copy, predict_logits
from cxrlab.export.runtime import FP32_FILE, OnnxModel
from cxrlab.files import atomic_write_bytes, atomic_write_json

OPSET = 18
RTOL, ATOL = 1e-3, 1e-4  # on logits; float32 kernels differ in summation order between the two runtimes
MIN_SPREAD = 1e-3  # logits' standard deviation across images below this: the check cannot tell a broken export


def onnx_path(run_path) -> Path:
    return Path(run_path) / FP32_FILE


def write_onnx(model: nn.Module, size: int, path: Path) -> None:
    """The model as an ONNX graph (input 'image' (batch, 1, size, size), output 'logit'), unchecked: see export_onnx."""
    dummy = torch.zeros(2, 1, size, size)
    # The TorchScript exporter (dynamo=False), though deprecated: the torch.export-based one gave a graph of the
    # same speed whose shapes onnxruntime's quantisation tools could not infer (tried with onnxscript 0.7.2).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (dummy,), str(path), dynamo=False, opset_version=OPSET, input_names=["image"], output_names=["logit"],
            dynamic_axes={"image": {0: "batch"}, "logit": {0: "batch"}},
        )


def export_onnx(trained: TrainedModel, echo=print) -> Path:
    """Write RUN/model.onnx (only when it passes the check) and RUN/export.json."""
    cfg, run = trained.cfg, trained.run
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        write_onnx(plain_copy(trained.model, "cpu"), cfg.size, tmp_path)
        check = verify(trained, tmp_path)
        atomic_write_bytes(onnx_path(run.path), tmp_path.read_bytes())
    import onnx
    import onnxruntime

    atomic_write_json(run.path / "export.json", {**check, "opset": OPSET, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                                                 "torch": torch.__version__, "exported": time.strftime("%Y-%m-%d %H:%M:%S")})
    echo(f"wrote {onnx_path(run.path)}: logits match PyTorch on {check['images']} val images "
         f"(largest difference {check['max_abs_diff']:.2e}, relative tolerance {RTOL:g})")
    return onnx_path(run.path)


def verify(trained: TrainedModel, path: Path) -> dict:
    cfg = trained.cfg
    images = task_data(cfg, splits=("val",)).splits["val"].images
    reference = predict_logits(trained.model, images, replace(cfg, precision="fp32"), trained.device).numpy()
    spread = float(reference.std(axis=0).max())
    if spread < MIN_SPREAD:
        raise ExportError(
            f"{trained.run.path}: the model gives the same output for every val image (std {spread:.1e}), so no comparison "
            "can show the export is right; train it longer (see README: MobileNetV3 needs many steps) and export again"
        )
    got = OnnxModel(path, cfg.norm_mean, cfg.norm_std).logits(images)
    if got.shape != reference.shape or not np.allclose(got, reference, rtol=RTOL, atol=ATOL):
        worst = float(np.abs(got - reference).max()) if got.shape == reference.shape else float("nan")
        raise ExportError(f"the ONNX model's logits differ from PyTorch's on val images (largest difference {worst:.3g}); not written")
    return {"images": len(images), "rtol": RTOL, "atol": ATOL, "max_abs_diff": float(np.abs(got - reference).max()), "logit_std": spread}
