"""The out-of-distribution check: fitted when a run finishes, measured on sets that are not chest X-rays, applied by
predict, the Python API and the service; an older run without one still loads, says so, and gets one on request."""

import io
import json
import shutil

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from cxrlab.cli import main
from cxrlab.core.runs import RunDir
from cxrlab.data.task import load_task
from cxrlab.serve.app import create_app


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def val_image(exported_run) -> np.ndarray:
    cfg = RunDir(exported_run).load_config()
    return load_task(cfg.data_root, 28, cfg.classes, splits=("val",)).splits["val"].images[0].numpy()


def test_a_finished_run_measures_its_check_on_test_and_on_images_that_are_not_chest_xrays(exported_run):
    summary = json.loads(RunDir(exported_run).summary.read_text())
    flagged = summary["ood"]["flagged"]
    assert flagged["test split (chest X-rays)"] <= 0.05  # the threshold accepts 99% of val; test is of the same kind
    others = {name: share for name, share in flagged.items() if not name.startswith("test")}
    assert len(others) == 4 and all(share >= 0.9 for share in others.values()), others
    assert json.loads((RunDir(exported_run).path / "ood.json").read_text())["threshold"] == summary["ood"]["threshold"]


def test_the_service_gives_no_class_to_an_image_unlike_the_training_images(exported_run, val_image):
    client = TestClient(create_app(exported_run))
    noise = np.random.default_rng(0).integers(0, 256, (512, 512), dtype=np.uint8)
    answer = client.post(
        "/predict",
        files=[
            ("files", ("noise.png", png(noise), "image/png")),
            ("files", ("xray.png", png(np.asarray(Image.fromarray(val_image).resize((256, 256)))), "image/png")),
        ],
    )
    flagged, xray = answer.json()["results"]
    assert flagged["in_distribution"] is False and flagged["class"] is None and flagged["probability"] is None
    assert (
        flagged["ood_score"] > flagged["ood_threshold"] and "does not look like the images the model was trained on" in flagged["message"]
    )
    assert xray["in_distribution"] is True and xray["class"] and xray["ood_score"] <= xray["ood_threshold"]
    refused = client.post("/explain", files={"file": ("noise.png", png(noise), "image/png")})
    assert refused.status_code == 422 and "not explained" in refused.json()["detail"]


def test_a_run_without_a_check_still_predicts_says_so_and_gets_one_on_request(exported_run, val_image, tmp_path, capsys):
    import cxrlab

    old = tmp_path / "old"
    shutil.copytree(exported_run, old)
    for name in ("ood.npz", "model.onnx", "model.int8.onnx", "export.json"):  # a run finished and exported before checks
        (old / name).unlink(missing_ok=True)
    summary = json.loads((old / "summary.json").read_text())
    summary.pop("ood")
    (old / "summary.json").write_text(json.dumps(summary))
    image = tmp_path / "xray.png"
    image.write_bytes(png(val_image))
    assert main(["predict", str(old), str(image)]) == 0
    captured = capsys.readouterr()
    assert "no out-of-distribution check" in captured.err and f"cxrlab ood {old}" in captured.err
    assert cxrlab.load_run(old).predict(val_image)[0].in_distribution is None
    assert main(["ood", str(old)]) == 0
    assert "threshold" in json.loads((old / "summary.json").read_text())["ood"] and (old / "ood.npz").is_file()
    assert cxrlab.load_run(old).predict(val_image)[0].in_distribution is True


def test_the_exported_model_carries_the_check_and_one_fitted_again_since_is_refused(exported_run, val_image, tmp_path):
    from cxrlab.errors import ExportError
    from cxrlab.evaluation.inference import load_trained
    from cxrlab.evaluation.ood import OODCheck
    from cxrlab.export.runtime import OnnxModel, served

    trained = load_trained(exported_run)
    exported = OnnxModel(exported_run / "model.onnx", trained.cfg.norm_mean, trained.cfg.norm_std)
    images = np.stack([val_image, np.zeros_like(val_image), np.random.default_rng(0).integers(0, 256, val_image.shape, dtype=np.uint8)])
    _, onnx_scores = exported.predict(images)
    _, torch_scores = trained.predict(torch.from_numpy(images))
    np.testing.assert_allclose(onnx_scores, torch_scores, rtol=1e-3)
    assert float(exported.metadata["ood_threshold"]) == trained.ood.threshold
    changed = tmp_path / "refitted"
    shutil.copytree(exported_run, changed)
    check = OODCheck.load(changed)
    check.threshold *= 2
    check.save(changed)
    with pytest.raises(ExportError, match="cxrlab export"):
        served(load_trained(changed))


def test_fitting_the_check_again_in_python_exports_again_so_predict_keeps_working(exported_run, val_image, tmp_path):
    """The rule lives in the API, not in the CLI: a notebook's fit_ood on an exported run leaves a servable run."""
    import cxrlab

    run_path = tmp_path / "refit"
    shutil.copytree(exported_run, run_path)
    before = (run_path / "model.onnx").stat().st_ino
    cxrlab.fit_ood(run_path)
    assert (run_path / "model.onnx").stat().st_ino != before  # written again (atomically: a new file) with the check
    prediction = cxrlab.load_run(run_path).predict(val_image)[0]
    assert prediction.in_distribution is True and prediction.answer


def test_the_checks_precision_is_scikit_learns_ledoit_wolf_precision_also_for_constant_features():
    from sklearn.covariance import LedoitWolf

    from cxrlab.evaluation.ood import shrunk_precision

    rng = np.random.default_rng(0)
    for features in (
        rng.normal(size=(200, 30)) @ rng.normal(size=(30, 30)),
        rng.normal(size=(20, 64)),  # more features than images
        np.zeros((50, 8)),
    ):  # a layer whose features never vary: singular, the pseudo-inverse
        centred = features - features.mean(0)
        expected = LedoitWolf(assume_centered=True).fit(centred).precision_
        assert np.allclose(shrunk_precision(centred), expected, rtol=1e-8, atol=1e-10)


def test_building_the_ct_mr_set_leaves_pydicoms_logger_as_it_was_even_when_it_fails(monkeypatch):
    import logging

    import pydicom  # noqa: F401 - importing pydicom sets its logger's level: before the test sets it

    import cxrlab.data.images
    from cxrlab.evaluation import ood_sets

    def broken(*args, **kwargs):
        raise RuntimeError("disk gone")

    logger = logging.getLogger("pydicom")
    logger.setLevel(logging.INFO)
    monkeypatch.setattr(cxrlab.data.images, "decode_full", broken)
    with pytest.raises(RuntimeError, match="disk gone"):
        ood_sets._ct_mr()
    assert logger.level == logging.INFO
