"""ONNX export of a finished run, verified against PyTorch, and onnxruntime inference.

    RUN/model.onnx      input 'image' float (batch, 1, S, S), normalised as in training; output 'logit' (batch, outputs)
                        and, for a run with an out-of-distribution check, 'ood_score' (batch,): the check inside the
                        graph, flagged above the metadata entry 'ood_threshold' ('ood_digest': the RUN/ood.npz it holds)
    RUN/export.json     how the file was checked: images, tolerance, largest differences, opset, versions

The check runs the trained model and the ONNX file on the run's val images and compares logits with a relative
tolerance, and the check's scores with the run's (float64) check. An untrained or collapsed model can give (nearly) the same
output for every image, which any broken
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

from cxrlab.console import logger
from cxrlab.data.task import task_data
from cxrlab.errors import ExportError
from cxrlab.evaluation.inference import TrainedModel, plain_copy, predict_logits
from cxrlab.evaluation.ood import ScoredModel, check_digest, layer_features
from cxrlab.export.runtime import OnnxModel
from cxrlab.files import atomic_write_bytes, atomic_write_json
from cxrlab.models.probe import FeatureProbe

log = logger(__name__)

OPSET = 18
RTOL, ATOL = 1e-3, 1e-4  # on logits; float32 kernels differ in summation order between the two runtimes
SCORE_RTOL = 1e-3  # float32 scores may decide otherwise than float64 only this close to the threshold
MIN_SPREAD = 1e-3  # logits' standard deviation across images below this: the check cannot tell a broken export


def write_onnx(model: nn.Module, size: int, path: Path, metadata: dict[str, str] | None = None) -> None:
    """The model as an ONNX graph (input 'image' (batch, 1, size, size), output 'logit', and 'ood_score' when
    ``model`` is a ScoredModel), unchecked: see export_onnx."""
    dummy = torch.zeros(2, 1, size, size)
    outputs = ["logit", "ood_score"] if isinstance(model, ScoredModel) else ["logit"]
    # The TorchScript exporter (dynamo=False), though deprecated: the torch.export-based one gave a graph of the
    # same speed whose shapes onnxruntime's quantisation tools could not infer (tried with onnxscript 0.7.2).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["image"],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in ["image", *outputs]},
        )
    if metadata:
        import onnx

        graph = onnx.load(str(path))
        for key, value in metadata.items():
            graph.metadata_props.add(key=key, value=value)
        onnx.save(graph, str(path))


def exportable(trained: TrainedModel) -> tuple[nn.Module, dict[str, str]]:
    """The graph to export (the model, with the run's check inside when it has one) and its metadata."""
    model = plain_copy(trained.model, "cpu")
    if trained.ood is None:
        return model, {}
    check = trained.ood
    scored = ScoredModel(FeatureProbe(model), check, trained.cfg.norm_mean, trained.cfg.norm_std, trained.cfg.size).eval()
    return scored, {"ood_threshold": repr(check.threshold), "ood_digest": check_digest(trained.run.path)}


def export_onnx(trained: TrainedModel) -> Path:
    """Write RUN/model.onnx (only when it passes the check) and RUN/export.json."""
    cfg, run = trained.cfg, trained.run
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        model, metadata = exportable(trained)
        write_onnx(model, cfg.size, tmp_path, metadata)
        check = verify(trained, tmp_path)
        atomic_write_bytes(run.onnx, tmp_path.read_bytes())
    import onnx
    import onnxruntime

    atomic_write_json(
        run.export_report,
        {
            **check,
            "opset": OPSET,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
            "exported": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
    )
    log.info(
        f"wrote {run.onnx}: logits match PyTorch on {check['images']} val images "
        f"(largest difference {check['max_abs_diff']:.2e}, relative tolerance {RTOL:g})"
        + (
            f"; the out-of-distribution check inside agrees on {check['ood_agreement']:.1%} of val and out-of-distribution images"
            if "ood_agreement" in check
            else "; no out-of-distribution check in this run (cxrlab ood RUN fits one)"
        )
    )
    return run.onnx


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
    exported = OnnxModel(path, cfg.norm_mean, cfg.norm_std)
    got = exported.logits(images)
    if got.shape != reference.shape or not np.allclose(got, reference, rtol=RTOL, atol=ATOL):
        worst = float(np.abs(got - reference).max()) if got.shape == reference.shape else float("nan")
        raise ExportError(f"the ONNX model's logits differ from PyTorch's on val images (largest difference {worst:.3g}); not written")
    report = {"images": len(images), "rtol": RTOL, "atol": ATOL, "max_abs_diff": float(np.abs(got - reference).max()), "logit_std": spread}
    if trained.ood is not None:
        report.update(verify_check(trained, exported, images))
    return report


def verify_check(trained: TrainedModel, exported: OnnxModel, val_images: torch.Tensor) -> dict:
    """The check inside the graph (float32) against the run's (float64) on val and on the sets that are not chest
    X-rays: the same decision for every image not within SCORE_RTOL of the threshold."""
    from cxrlab.evaluation.ood_sets import with_ood_sets

    cfg, check = trained.cfg, trained.ood
    images = with_ood_sets(val_images.numpy(), cfg.size, trained.preprocess, cfg.seed)
    reference = check.scores(layer_features(trained.probe, torch.from_numpy(images), replace(cfg, precision="fp32"), trained.device))
    _, got = exported.predict(images)
    same = (got > check.threshold) == (reference > check.threshold)
    borderline = np.abs(reference - check.threshold) <= SCORE_RTOL * check.threshold
    if not np.all(same | borderline):
        raise ExportError(
            f"the out-of-distribution check inside the ONNX model decides {int((~same & ~borderline).sum())} of "
            f"{len(images)} images otherwise than the run's check; not written"
        )
    return {
        "ood_images": len(images),
        "ood_agreement": float(same.mean()),
        "ood_max_rel_diff": float(np.max(np.abs(got - reference) / np.maximum(reference, 1e-12))),
    }
