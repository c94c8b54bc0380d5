"""The refer answer wherever a prediction is shown (predict in the CLI and the API, the service and its model card,
explain), never turned into a class; a run trained before operating points predicts with its single threshold and
says so; the operating-point command refuses what its evidence cannot show."""

import io
import json
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import cxrlab
from cxrlab.cli import main
from cxrlab.core.runs import RunDir
from cxrlab.data.task import load_task
from cxrlab.serve.app import create_app
from tests.conftest import band_around


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def banded(exported_run, tmp_path_factory):
    """A copy of the run whose refer band is set around its answer for one val image: (run, image file, P)."""
    run = tmp_path_factory.mktemp("refer") / "run"
    shutil.copytree(exported_run, run)
    cfg = RunDir(run).load_config()
    image = load_task(cfg.data_root, 28, cfg.classes, splits=("val",)).splits["val"].images[0].numpy()
    path = run.parent / "xray.png"
    path.write_bytes(png(image))
    p = cxrlab.load_run(run).predict(path)[0].probability
    band_around(run, p)
    return run, path, p


def test_an_image_inside_the_band_is_referred_in_the_api_and_the_cli(banded, capsys):
    run, path, p = banded
    answer = cxrlab.load_run(run).predict(path)[0]
    assert answer.referred and answer.answer == "refer" and answer.label is None and answer.probability == pytest.approx(p, abs=1e-6)
    assert "between the rule-out threshold" in answer.reason and answer.in_distribution is True
    single = cxrlab.load_run(run).predict(path, decision="single")[0]
    assert not single.referred and single.label in RunDir(run).load_config().classes
    assert main(["predict", str(run), str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.split("\t")[1] == "refer" and "rule-out below" in captured.err
    assert main(["predict", str(run), str(path), "--decision", "single"]) == 0
    assert capsys.readouterr().out.split("\t")[1] == single.label


def test_the_service_and_explain_answer_refer_and_say_why(banded, tmp_path):
    run, path, _ = banded
    client = TestClient(create_app(run))
    result = client.post("/predict", files=[("files", ("xray.png", path.read_bytes(), "image/png"))]).json()["results"][0]
    assert result["answer"] == "refer" and result["class"] is None and result["decision"] == "refer"
    assert result["rule_out"] < result["probability"] < result["rule_in"] and "refer to a reader" in result["message"]
    card = client.get("/model").json()
    assert card["operating_point"]["rule_in"] == result["rule_in"] and card["decision"] == "refer"
    explained = cxrlab.load_run(run).explain([path], out=tmp_path)[0]
    positive = RunDir(run).load_config().positive
    assert explained.answer == "refer" and explained.label is None and explained.explained == positive and explained.overlay.is_file()


def test_a_run_from_before_operating_points_predicts_at_its_threshold_and_says_so(exported_run, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(exported_run, old)
    (old / "operating_point.json").unlink()
    image = tmp_path / "x.png"
    cfg = RunDir(old).load_config()
    image.write_bytes(png(load_task(cfg.data_root, 28, cfg.classes, splits=("val",)).splits["val"].images[1].numpy()))
    assert main(["predict", str(old), str(image)]) == 0
    captured = capsys.readouterr()
    assert (
        "trained before operating points" in captured.err
        and f"single threshold {json.loads((old / 'summary.json').read_text())['threshold']:.4g}" in captured.err
    )
    assert captured.out.split("\t")[1] in cfg.classes


def test_operating_point_refits_on_the_evidence_and_refuses_what_it_cannot_show(exported_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    assert main(["operating-point", str(run), "--rule-in-specificity", "1"]) == 2
    assert "best reachable 95% lower bound" in capsys.readouterr().err
    assert main(["operating-point", str(run), "--prevalence", "1.5"]) == 2
    assert "prevalence must be" in capsys.readouterr().err
    assert (
        main(
            [
                "operating-point",
                str(run),
                "--rule-out-sensitivity",
                "0.6",
                "--rule-in-specificity",
                "0.6",
                "--threshold",
                "bayes",
                "--prevalence",
                "0.3",
            ]
        )
        == 0
    )
    point = json.loads(RunDir(run).operating_point.read_text())
    saved = RunDir(run).load_config()
    assert point["sensitivity_target"] == 0.6 and point["rule_out"] <= point["rule_in"] and point["rule"] == "bayes"
    assert (
        saved.prevalence == 0.3
        and saved.threshold == "bayes"
        and json.loads((run / "summary.json").read_text())["threshold"] == point["threshold"]
    )
