"""Inference speed of one run, every way it can run, measured in one process on the same val images.

Batch-1 latency (p50, p95 over single images) and batched throughput (images/s) for: eager PyTorch (NCHW),
eager PyTorch channels_last, onnxruntime fp32 and any INT8 model, plus `predict` end to end (PNG bytes in,
class out) on the backend `predict` and `serve` use. Ratios are against eager PyTorch.
"""

from __future__ import annotations

import io
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cxrlab.console import logger
from cxrlab.data.images import decode_image
from cxrlab.data.task import task_data
from cxrlab.evaluation.inference import TrainedModel, load_trained, plain_copy, predict_logits
from cxrlab.evaluation.predict import predict_images
from cxrlab.export.onnx import write_onnx
from cxrlab.export.quantize import latency_ms
from cxrlab.export.runtime import OnnxModel, served
from cxrlab.files import atomic_write_json

log = logger(__name__)


def throughput(run_batch, images, repeats: int = 3) -> float:
    run_batch(images[:64])  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run_batch(images)
        times.append(time.perf_counter() - t0)
    return len(images) / float(np.median(times))


def bench_run(run_path, batch: int = 256) -> list[dict]:
    trained = load_trained(run_path, "cpu")
    cfg = trained.cfg
    images = task_data(cfg, splits=("val",)).splits["val"].images
    arrays = images.numpy()
    cpu = torch.device("cpu")
    variants = {}
    for name, channels_last in (("PyTorch eager (NCHW)", False), ("PyTorch eager, channels_last", True)):
        c = replace(cfg, channels_last=channels_last, precision="fp32", eval_batch_size=batch)
        model = plain_copy(trained.model, cpu, channels_last)
        variants[name] = lambda x, c=c, m=model: predict_logits(m, torch.as_tensor(x), c, cpu)
    for path, name in ((trained.run.onnx, "onnxruntime fp32"), (trained.run.int8_onnx, "onnxruntime INT8 (shipped)")):
        if path.is_file():
            session = OnnxModel(path, cfg.norm_mean, cfg.norm_std, trained.threads)
            variants[name] = lambda x, s=session: s.logits(x, batch)
    rows = []
    for name, fn in variants.items():
        p50, p95 = latency_ms(fn, arrays)
        rows.append({"variant": name, "p50_ms": p50, "p95_ms": p95, "images_per_s": throughput(fn, arrays)})
    rows.append(end_to_end(trained, arrays))
    eager = rows[0]
    for r in rows:
        r["p50_vs_eager"] = eager["p50_ms"] / r["p50_ms"]
        r["throughput_vs_eager"] = (r["images_per_s"] / eager["images_per_s"]) if r["images_per_s"] else None
    atomic_write_json(trained.run.bench_report, {"images": len(arrays), "batch": batch, "threads": torch.get_num_threads(), "rows": rows})
    log.info(
        f"{trained.cfg.model}, {cfg.size} px, {len(arrays)} val images, {torch.get_num_threads()} threads; ratios: eager p50 / variant p50"
    )
    log.info(f"{'variant':<44}{'p50 ms':>9}{'p95 ms':>9}{'images/s':>11}{'p50 speed-up':>14}")
    for r in rows:
        ips = f"{r['images_per_s']:>11.0f}" if r["images_per_s"] else f"{'—':>11}"
        log.info(f"{r['variant']:<44}{r['p50_ms']:>9.2f}{r['p95_ms']:>9.2f}{ips}{r['p50_vs_eager']:>13.2f}x")
    quant = trained.run.quantization_report
    if quant.is_file():
        log.info(
            "quantisation (cxrlab export): "
            + "; ".join(f"{c['name']}: {'shipped' if c['shipped'] else c['why']}" for c in trained.run.read_json(quant)["candidates"][1:])
        )
    else:
        log.info("no INT8 model: run 'cxrlab export RUN' to try the quantisations")
    return rows


def deployed_speed(trained: TrainedModel, images: torch.Tensor) -> dict:
    """Inference speed on the path predict and serve deploy (onnxruntime on CPU), for the compare report: fp32 from the
    run's model.onnx (exported to a temporary file when the run has none) and the run's INT8 model when one was shipped.
    Batch-1 median latency (ms/image) and throughput at the run's eval batch size (images/s)."""
    import onnxruntime

    cfg = trained.cfg
    arrays = images.numpy()
    speed = {"backend": f"onnxruntime {onnxruntime.__version__} (CPU)", "batch": cfg.eval_batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = trained.run.onnx
        if not fp32.is_file():
            fp32 = Path(tmp) / fp32.name
            write_onnx(plain_copy(trained.model, torch.device("cpu")), cfg.size, fp32)
        for prefix, path in (("", fp32), ("int8_", trained.run.int8_onnx)):
            if path.is_file():
                session = OnnxModel(path, cfg.norm_mean, cfg.norm_std, trained.threads)
                speed[f"{prefix}ms_per_image"] = latency_ms(session.logits, arrays)[0]
                speed[f"{prefix}images_per_s"] = throughput(lambda x, s=session: s.logits(x, cfg.eval_batch_size), arrays)
    return speed


def end_to_end(trained: TrainedModel, arrays: np.ndarray) -> dict:
    """What `predict` does for one image: decode PNG bytes, resize, run the served backend, answer."""
    trained = served(trained)
    pngs = []
    for image in arrays[:200]:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    size = trained.cfg.size

    def one(i):  # predict's own route: the class (of the positive class's probability) or refer
        return predict_images(trained, decode_image(pngs[i], "bench.png", size)[None], ["bench.png"])[0].answer

    for i in range(5):
        one(i)
    times = []
    for i in range(len(pngs)):
        t0 = time.perf_counter()
        one(i)
        times.append((time.perf_counter() - t0) * 1000)
    return {
        "variant": f"predict end to end (PNG -> class, {trained.backend})",
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
        "images_per_s": None,
    }
