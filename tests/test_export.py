"""ONNX export checked on a trained model, onnxruntime serving predict, quantisation rule, bench, Grad-CAM."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cxrlab.cli import main
from cxrlab.data.task import load_task
from cxrlab.errors import ExportError
from cxrlab.evaluation.explain import Explainer, cam_layer
from cxrlab.evaluation.inference import load_trained
from cxrlab.export.onnx import export_onnx
from cxrlab.export.runtime import served
from cxrlab.models.registry import create_model
from tests.conftest import LEARNING, binary_images


def val_images(run_path, n=64):
    trained = load_trained(run_path, "cpu")
    cfg = trained.cfg
    return trained, load_task(cfg.data_root, cfg.size, cfg.classes, splits=("val",)).splits["val"].images[:n]


def test_onnx_export_matches_pytorch_and_serves_predict(exported_run):
    check = json.loads((exported_run / "export.json").read_text())
    assert check["images"] == binary_images(LEARNING)["val"] and check["max_abs_diff"] < 1e-3 and check["logit_std"] > 1e-3
    trained, images = val_images(exported_run)
    reference = trained.probs(images)
    exported = served(trained)
    assert exported.backend == "onnxruntime" and exported.runtime is not None and trained.runtime is None
    onnx_probs = exported.probs(images)
    assert onnx_probs.std() > 1e-3  # a constant model would make the comparison meaningless
    np.testing.assert_allclose(onnx_probs, reference, rtol=1e-3, atol=1e-5)
    # dynamic batch: one image and 64 images through the same file
    assert exported.probs(images[:1]).shape == (1, 1)


def test_quantisation_ships_the_fastest_passing_int8_model_and_removes_one_that_no_longer_passes(exported_run, tmp_path, monkeypatch):
    """Both branches forced: a rule every candidate passes ships exactly one ONNX INT8 model, the fastest; a rule none
    passes ships none, removes the INT8 file shipped before, and each refusal says why."""
    from cxrlab.export import quantize

    copy = tmp_path / "run"
    shutil.copytree(exported_run, copy)
    monkeypatch.setattr(quantize, "MIN_SPEEDUP", 0.0)
    monkeypatch.setattr(quantize, "MAX_ACCURACY_DROP", 100.0)
    monkeypatch.setattr(quantize, "MIN_CHECK_AGREEMENT", 0.0)
    _, *candidates = quantize.quantize_run(load_trained(copy, "cpu"))["candidates"]
    onnx = [c for c in candidates if c["name"].startswith("onnxruntime")]
    assert [c["shipped"] for c in onnx].count(True) == 1 and not any(c["shipped"] for c in candidates if c not in onnx)
    assert next(c for c in onnx if c["shipped"])["p50_ms"] == min(c["p50_ms"] for c in onnx)
    assert (copy / "model.int8.onnx").is_file()
    monkeypatch.setattr(quantize, "MIN_SPEEDUP", float("inf"))
    _, *candidates = quantize.quantize_run(load_trained(copy, "cpu"))["candidates"]
    assert not any(c["shipped"] for c in candidates) and not (copy / "model.int8.onnx").exists()
    assert all("faster than fp32" in c["why"] for c in candidates if c["name"].startswith("onnxruntime"))


def test_a_model_with_constant_outputs_is_not_exported(exported_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(exported_run, copy)
    (copy / "model.onnx").unlink()
    trained = load_trained(copy, "cpu")
    with torch.no_grad():  # the last layer ignores its input: every image gets the same logit
        trained.model.classifier[-1].weight.zero_()
    with pytest.raises(ExportError, match="same output for every val image"):
        export_onnx(trained)
    assert not (copy / "model.onnx").exists()


def test_quantisation_ships_only_what_passes_the_rule_and_bench_reports_every_backend(exported_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(exported_run, copy)
    assert main(["export", str(copy)]) == 0
    report = json.loads((copy / "quantization.json").read_text())
    _fp32, *candidates = report["candidates"]
    assert {c["name"].split(" (")[0] for c in candidates} == {"torch dynamic INT8", "onnxruntime dynamic INT8", "onnxruntime static INT8"}
    assert all(c["why"] for c in candidates)  # every candidate says why it was or was not shipped
    assert (copy / "model.int8.onnx").exists() == any(c["shipped"] for c in candidates)
    capsys.readouterr()
    assert main(["bench", str(copy), "--batch", "64"]) == 0
    out = capsys.readouterr().out
    for variant in ("PyTorch eager (NCHW)", "channels_last", "onnxruntime fp32", "predict end to end"):
        assert variant in out
    rows = json.loads((copy / "bench.json").read_text())["rows"]
    assert all(r["p50_ms"] > 0 and r["p95_ms"] >= r["p50_ms"] for r in rows)


@pytest.mark.parametrize(
    "name, size, layer, side",
    [
        ("mobilenet_v3_large", 28, "features.6", 7),
        ("efficientnet_b0", 28, "features.3", 7),
        ("densenet121", 28, "features.denseblock2", 7),
        ("densenet121", 224, "features.norm5", 7),
    ],
)
def test_gradcam_layer_is_the_deepest_with_a_useful_map(name, size, layer, side):
    model = create_model(name, image_size=size)
    chosen, block = cam_layer(model, size)
    assert chosen == layer
    seen = {}
    block.register_forward_hook(lambda _m, _i, out: seen.update(side=out.shape[-1]))  # returns None: output kept
    model.eval()(torch.zeros(1, 1, size, size))
    assert seen["side"] == side


def test_gradcam_maps_vary_and_explain_writes_overlays(exported_run, tmp_path, capsys):
    trained, images = val_images(exported_run, 8)
    maps, _probs, classes = Explainer(trained).heatmaps(images)
    assert maps.shape == (8, 28, 28) and maps.min() >= 0 and maps.max() <= 1
    assert all(m.std() > 0 for m in maps)  # not the constant map of a 1x1 layer
    assert set(classes) <= set(trained.classes)
    png = tmp_path / "xray.png"
    Image.fromarray(images[0].numpy()).resize((200, 160)).convert("RGB").save(png)
    out = tmp_path / "out"
    assert main(["explain", str(exported_run), str(png), "--val-grid", "--out", str(out)]) == 0
    overlay = Image.open(out / "xray_gradcam.png")
    assert overlay.size == (224, 224) and overlay.mode == "RGB"
    assert (out / "gradcam_val_grid.png").stat().st_size > 10_000


def test_loading_a_run_trained_on_one_thread_leaves_inference_threads_to_the_caller(exported_run, tmp_path):
    """A run trained side by side saves threads: 1; loading it for inference changed torch's process-wide thread count
    and gave onnxruntime one thread. Now torch keeps the caller's count and the sessions use one thread per core."""
    import yaml

    from cxrlab.evaluation.inference import load_trained
    from cxrlab.export.runtime import served

    run = tmp_path / "side-by-side"
    shutil.copytree(exported_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "threads": 1}, sort_keys=False))
    torch.set_num_threads(2)
    trained = served(load_trained(run))
    assert torch.get_num_threads() == 2
    assert trained.runtime.session.get_session_options().intra_op_num_threads == 0  # onnxruntime's default: one per core
    assert served(load_trained(run, threads=1)).runtime.session.get_session_options().intra_op_num_threads == 1


def test_quantisation_drops_only_onnxruntimes_advice_and_leaves_the_root_logger_alone(caplog):
    import logging

    from cxrlab.export.quantize import quiet_quantizer_advice

    root = logging.getLogger()
    level = root.level
    with caplog.at_level(logging.WARNING), quiet_quantizer_advice():
        assert root.level == logging.WARNING  # unchanged by the helper (caplog set it)
        root.handle(root.makeRecord("root", logging.WARNING, "/x/site-packages/onnxruntime/quantization/q.py", 1, "advice", (), None))
        root.handle(root.makeRecord("root", logging.WARNING, "/x/app.py", 1, "another thread's warning", (), None))
    assert [r.getMessage() for r in caplog.records] == ["another thread's warning"] and not root.filters and root.level == level


def test_explain_answers_what_predict_answers_through_the_served_backend(exported_run, tmp_path):
    """After export, predict answers from onnxruntime; explain decides its class (and the out-of-distribution check) by
    the same route, so the two never name different classes for one image, also near the threshold."""
    import cxrlab

    _trained, images = val_images(exported_run, 12)
    paths = []
    for i, image in enumerate(images.numpy()):
        paths.append(tmp_path / f"x{i}.png")
        Image.fromarray(image).save(paths[-1])
    run = cxrlab.load_run(exported_run)
    assert run.trained().backend.startswith("onnxruntime")
    predicted = [(p.answer, p.probability) for p in run.predict(paths)]
    explained = [(e.answer, e.probability) for e in run.explain(paths, out=tmp_path / "cam")]
    assert [a for a, _ in explained] == [a for a, _ in predicted]
    assert [p for _, p in explained] == [p for _, p in predicted]
