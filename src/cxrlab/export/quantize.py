"""INT8 quantisation: try what exists, ship only what pays.

Candidates, each measured on the run's val images against onnxruntime fp32:
- torch dynamic INT8 (quantize_dynamic on the Linear layers: only the head; convolutions stay fp32);
- onnxruntime dynamic INT8 (weights INT8, activations quantised at run time; convolutions become ConvInteger);
- onnxruntime static INT8 (QDQ, per-channel weights, activation ranges calibrated on val images).

Rule: an INT8 model is shipped (RUN/model.int8.onnx, which `predict` and `serve` then use) only when its
batch-1 median latency is at least 10% below fp32's, its val accuracy at the run's threshold is within 0.5 points of
fp32's and, for a run with an out-of-distribution check, the check (kept in float, fed by INT8 features) flags the
same val and out-of-distribution images as fp32's on at least 99% of them. RUN/quantization.json records every
candidate and why it was or was not shipped.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrlab.console import logger
from cxrlab.data.task import task_data
from cxrlab.evaluation.inference import TrainedModel, plain_copy, predict_logits
from cxrlab.evaluation.ood_sets import with_ood_sets
from cxrlab.evaluation.scoring import positive_view
from cxrlab.export.runtime import OnnxModel
from cxrlab.files import atomic_write_bytes, atomic_write_json

log = logger(__name__)

MAX_ACCURACY_DROP = 0.5  # points of val accuracy
MIN_CHECK_AGREEMENT = 0.99  # share of val and out-of-distribution images the INT8 check decides as fp32's
MIN_SPEEDUP = 1.1  # fp32 p50 / INT8 p50 at batch 1; smaller gains are within this machine's run-to-run noise
CALIBRATION_IMAGES = 256
LATENCY_IMAGES = 200


def latency_ms(run_one, images: np.ndarray | torch.Tensor, n: int = LATENCY_IMAGES) -> tuple[float, float]:
    """(p50, p95) in ms of ``run_one`` on single images, after a warm-up."""
    for i in range(min(5, len(images))):
        run_one(images[i : i + 1])
    times = []
    for i in range(min(n, len(images))):
        t0 = time.perf_counter()
        run_one(images[i : i + 1])
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def accuracy(trained: TrainedModel, logits: np.ndarray, targets: np.ndarray) -> float:
    probs = 1 / (1 + np.exp(-np.asarray(logits, dtype=np.float64)[:, 0]))
    y, p = positive_view(targets, probs, trained.classes, trained.cfg.positive)
    return float(((p >= trained.threshold) == (y == 1)).mean())


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over normalised val images."""

    def __init__(self, images: np.ndarray, mean: float, std: float):
        self.batches = iter(
            [{"image": ((images[i : i + 32, None].astype(np.float32) / 255) - mean) / std} for i in range(0, len(images), 32)]
        )

    def get_next(self):
        return next(self.batches, None)


def check_nodes(path: Path) -> list[str]:
    """The nodes outside the model's own graph (the out-of-distribution check's distances): kept in float."""
    import onnx

    return [node.name for node in onnx.load(str(path)).graph.node if not node.name.startswith("/probe/graph/")]


def torch_dynamic(model: nn.Module) -> nn.Module:
    cpu = plain_copy(model, "cpu")
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices: measured here, not relied on
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(cpu, {nn.Linear}, dtype=torch.qint8)


class _QuantizerAdvice(logging.Filter):
    """Drops onnxruntime.quantization's advice (below ERROR), which it logs through the root logger; lets every
    other record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname


@contextlib.contextmanager
def quiet_quantizer_advice():
    """Keep the console for results while quantising: the root logger's level is left alone (another thread's
    messages still show); only onnxruntime's advice is dropped, and the filter is removed afterwards."""
    root, advice = logging.getLogger(), _QuantizerAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def quantize_run(trained: TrainedModel) -> dict:
    """Build and measure every candidate; ship the best that passes the rule. Needs RUN/model.onnx."""
    cfg, run = trained.cfg, trained.run
    val = task_data(cfg, splits=("val",)).splits["val"]
    images, targets = val.images.numpy(), val.targets.numpy()
    fp32 = OnnxModel(run.onnx, cfg.norm_mean, cfg.norm_std, trained.threads)
    base_acc = accuracy(trained, fp32.logits(images), targets)
    base_p50, base_p95 = latency_ms(fp32.logits, images)
    check_images = with_ood_sets(images, cfg.size, trained.preprocess, cfg.seed) if fp32.has_check else None
    base_flags = fp32.outputs(check_images)[1] > trained.ood.threshold if fp32.has_check else None
    results = [
        {"name": "onnxruntime fp32", "accuracy": base_acc, "p50_ms": base_p50, "p95_ms": base_p95, "shipped": False, "why": "reference"},
        torch_dynamic_entry(trained, val, targets),
    ]
    with tempfile.TemporaryDirectory() as tmp, quiet_quantizer_advice():
        shippable = []
        for name, path in onnx_candidates(run.onnx, Path(tmp), images, cfg).items():
            model = OnnxModel(path, cfg.norm_mean, cfg.norm_std, trained.threads)
            acc = accuracy(trained, model.logits(images), targets)
            p50, p95 = latency_ms(model.logits, images)
            agreement = float(((model.outputs(check_images)[1] > trained.ood.threshold) == base_flags).mean()) if model.has_check else None
            failed = failures(p50, base_p50, acc, base_acc, agreement)
            entry = {"name": name, "accuracy": acc, "p50_ms": p50, "p95_ms": p95, "check_agreement": agreement, "shipped": False}
            entry["why"] = "; ".join(failed) or "faster and accurate enough"
            results.append(entry)
            if not failed:
                shippable.append((p50, entry, path.read_bytes()))
        if shippable:
            _, entry, data = min(shippable, key=lambda s: s[0])
            entry["shipped"] = True
            atomic_write_bytes(run.int8_onnx, data)
        elif run.int8_onnx.exists():
            run.int8_onnx.unlink()  # an older INT8 file no longer passes: do not serve it
    report = {
        "rule": f"batch-1 p50 at least {MIN_SPEEDUP:g}x faster than fp32, val accuracy within {MAX_ACCURACY_DROP} points and the "
        f"same out-of-distribution decisions on {MIN_CHECK_AGREEMENT:.0%} of val and out-of-distribution images",
        "val_images": len(images),
        "candidates": results,
    }
    atomic_write_json(run.quantization_report, report)
    for r in results:
        log.info(f"  {r['name']:<48} val acc {r['accuracy']:.3f}  p50 {r['p50_ms']:.2f} ms  {'SHIPPED' if r['shipped'] else r['why']}")
    return report


def failures(p50: float, base_p50: float, acc: float, base_acc: float, agreement: float | None) -> list[str]:
    """Why a candidate is not shipped (nothing: it passes the rule)."""
    found = []
    if base_p50 / p50 < MIN_SPEEDUP:
        found.append(f"not {MIN_SPEEDUP:g}x faster than fp32 ({p50:.2f} vs {base_p50:.2f} ms at batch 1)")
    if round((base_acc - acc) * 100, 9) > MAX_ACCURACY_DROP:
        found.append(f"val accuracy {100 * (base_acc - acc):.1f} points below fp32 (limit {MAX_ACCURACY_DROP})")
    if agreement is not None and agreement < MIN_CHECK_AGREEMENT:
        found.append(f"its out-of-distribution check decides {agreement:.1%} of images as fp32's (limit {MIN_CHECK_AGREEMENT:.0%})")
    return found


def torch_dynamic_entry(trained: TrainedModel, val, targets: np.ndarray) -> dict:
    """PyTorch's dynamic INT8 (Linear layers), measured for comparison: not an ONNX file, so never shipped."""
    q_torch = torch_dynamic(trained.model)
    eager = replace(trained.cfg, channels_last=False, precision="fp32")
    cpu = torch.device("cpu")
    acc = accuracy(trained, predict_logits(q_torch, val.images, eager, cpu).numpy(), targets)
    p50, p95 = latency_ms(lambda x: predict_logits(q_torch, torch.from_numpy(x), eager, cpu), val.images.numpy())
    why = "PyTorch model, not an ONNX file: measured only"
    return {"name": "torch dynamic INT8 (Linear layers)", "accuracy": acc, "p50_ms": p50, "p95_ms": p95, "shipped": False, "why": why}


def onnx_candidates(source: Path, folder: Path, images: np.ndarray, cfg) -> dict[str, Path]:
    """onnxruntime's dynamic and static (QDQ, calibrated on val) INT8 models of ``source``, written into ``folder``;
    the out-of-distribution check's nodes stay fp32."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    files = {
        "onnxruntime dynamic INT8": folder / "dynamic.onnx",
        "onnxruntime static INT8 (QDQ, calibrated on val)": folder / "static.onnx",
    }
    keep = check_nodes(source)
    quantize_dynamic(str(source), str(files["onnxruntime dynamic INT8"]), weight_type=QuantType.QInt8, nodes_to_exclude=keep)
    quantize_static(
        str(source),
        str(files["onnxruntime static INT8 (QDQ, calibrated on val)"]),
        _Calibration(images[:CALIBRATION_IMAGES], cfg.norm_mean, cfg.norm_std),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=keep,
    )
    return files
