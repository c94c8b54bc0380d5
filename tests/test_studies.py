"""compare, cv and search end to end on phantom data: the report, run reuse, reproduction, bad input."""

import csv
import hashlib
import json
import shutil
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
import yaml

from cxrlab.cli import main
from cxrlab.config import load_config
from cxrlab.core.checkpoint import load_state
from cxrlab.core.runs import RunDir
from cxrlab.data import task as task_module
from cxrlab.data.datafile import SPLITS
from cxrlab.errors import RunDirError
from cxrlab.report.study import check_compatible
from cxrlab.training.loop import train
from tests.conftest import BINARY

FAST = ["--epochs", "1", "--batch-size", "32", "--n-bootstrap", "50", "--device", "cpu", "--no-progress"]
SEARCH_FAST = ["--epochs", "1", "--n-bootstrap", "50", "--device", "cpu"]  # search chooses the batch size itself
MODELS = ["mobilenet_v3_large", "efficientnet_b0"]


def compare_args(root, out, *extra):
    return [
        "compare",
        "--data-root",
        str(root),
        "--models",
        *MODELS,
        "--out",
        str(out),
        "--tta",
        "3",
        "--threshold",
        "sensitivity",
        "--target-sensitivity",
        "0.8",
        "--rule-out-sensitivity",
        "0.9",
        "--rule-in-specificity",
        "0.9",
        *FAST,
        *extra,
    ]


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@contextmanager
def splits_loaded():
    """Every split any data loading in this process asks the data file for, in order."""
    asked = []
    real = task_module.load_arrays

    def watched(path, size, splits=SPLITS, *args, **kwargs):
        asked.extend(splits)
        return real(path, size, splits, *args, **kwargs)

    with patch.object(task_module, "load_arrays", watched):
        yield asked


@pytest.fixture(scope="module")
def sealed(phantom_root, tmp_path_factory):
    """The study trained and its choices written, test sealed: (folder, the splits loaded, what its files held then).
    One worker, so that every load happens in this process, where it is watched."""
    out = tmp_path_factory.mktemp("compare")
    with splits_loaded() as asked:
        assert main(compare_args(phantom_root, out, "--seeds", "0", "--workers", "1")) == 0  # seed 1: the seeds test
    files = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    return out, asked, files


@pytest.fixture(scope="module")
def study(sealed):
    """The same study, its test scored by the sealed step."""
    out = sealed[0]
    assert main(["score", str(out)]) == 0
    return out


def json_keys(value) -> list[str]:
    if isinstance(value, dict):
        return [*value, *(k for v in value.values() for k in json_keys(v))]
    return [k for v in value for k in json_keys(v)] if isinstance(value, list) else []


def test_training_and_choosing_never_load_test_and_leave_no_test_metric(sealed):
    out, asked, files = sealed
    assert asked and "test" not in asked and {"train", "val"} <= set(asked)
    names = {p.name for p in files}
    assert {"choices.json", "seal.json"} <= names and not names & {"metrics.json", "comparison.csv", "report.md"}
    for path, data in files.items():
        if path.suffix == ".json" and path.name != "data.json":  # data.json: the file's provenance, its split sizes included
            assert not [k for k in json_keys(json.loads(data)) if "test" in k.lower()], path
        if path.suffix in (".csv", ".yaml", ".json"):
            assert b"test_" not in data, path
    assert json.loads(files[Path("seal.json")])["state"] == "sealed"
    assert sum(p.name == "ood.json" for p in files) == 2  # each run's out-of-distribution check, fitted without test
    assert main(["evaluate", str(out / "runs" / "efficientnet_b0-seed0")]) == 2  # a study's run is not scored on test alone


def test_test_is_scored_once_by_the_written_choices_and_named_by_their_hash(study, sealed, capsys):
    choices_file = study / "choices.json"
    assert choices_file.read_bytes() == sealed[2][Path("choices.json")]  # scoring changed no choice
    digest = hashlib.sha256(choices_file.read_bytes()).hexdigest()
    assert f"SHA-256 {digest}" in (study / "report.md").read_text() and "test scored once" in (study / "report.md").read_text()
    choices, rows = json.loads(choices_file.read_text()), read_csv(study / "comparison.csv")
    for row in rows:  # every row answers by its written operating point
        point = choices["entries"][f"{row['entry']} / seed {row['seed']}"]["point"]
        assert float(row["threshold"]) == point["threshold"] and float(row["rule_out"]) == point["rule_out"]
    assert "## Headline: " + choices["headline"]["entry"] in (study / "report.md").read_text()
    capsys.readouterr()
    assert main(["score", str(study)]) == 2 and "--rescore" in capsys.readouterr().err  # never twice by accident
    main(["status", str(study)])
    assert "test scored once" in capsys.readouterr().out


def test_the_headline_entry_answers_every_test_image_as_the_report_scored_it(study, tmp_path, capsys):
    from PIL import Image

    import cxrlab
    from cxrlab.data.task import task_data

    choices = json.loads((study / "choices.json").read_text())
    named = choices["headline"]["entry"]
    scored = [r for r in read_csv(study / "test_answers.csv") if r["entry"] == named and r["seed"] == "0"]
    entry = cxrlab.load_entry(study)  # the headline entry, first seed: its runs, views, weights and point as chosen
    assert entry.model.name == named and entry.model.point.to_dict() == choices["entries"][f"{named} / seed 0"]["point"]
    images = task_data(RunDir(study / "runs" / "efficientnet_b0-seed0").load_config(), splits=("test",)).splits["test"].images.numpy()
    answers = entry.predict(images)
    assert len(answers) == len(scored) > 0 and {r["in_distribution"] for r in scored} <= {"True", "False"}
    for answer, row in zip(answers, scored):
        assert answer.answer == row["answer"] and answer.answered_by.startswith(f"study entry {named}")
        if answer.probability is not None:
            assert abs(answer.probability - float(row["probability"])) <= 1e-6
    for i in range(3):  # the same through files and the command line, written to a file
        Image.fromarray(images[i]).save(tmp_path / f"test{i}.png")
    out = tmp_path / "answers.jsonl"
    assert main(["predict", str(study), *(str(tmp_path / f"test{i}.png") for i in range(3)), "--out", str(out)]) == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w["answer"] for w in written] == [r["answer"] for r in scored[:3]] and all(w["decision"] for w in written)
    capsys.readouterr()  # Grad-CAM names each image's class (or refer) as the entry answers it
    assert main(["explain", str(study), *(str(tmp_path / f"test{i}.png") for i in range(3)), "--out", str(tmp_path / "cam")]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()[1:]]
    assert [line[1] for line in lines] == [r["answer"] for r in scored[:3]]
    capsys.readouterr()
    assert main(["predict", str(study), str(tmp_path / "test0.png"), "--entry", "resnet"]) == 2
    refused = capsys.readouterr().err
    assert "no entry 'resnet'" in refused and "its entries: " in refused and named in refused
    assert main(["predict", str(study), str(tmp_path / "test0.png"), "--out", str(tmp_path / "a.txt")]) == 2
    from fastapi.testclient import TestClient

    from cxrlab.serve.app import create_app

    client = TestClient(create_app(study))  # the service answers as the report scored, and says what answers
    pngs = [("files", (f"test{i}.png", (tmp_path / f"test{i}.png").read_bytes(), "image/png")) for i in range(3)]
    served = client.post("/predict", files=pngs).json()["results"]
    assert [r["answer"] for r in served] == [r["answer"] for r in scored[:3]]
    assert all(r["answered_by"].startswith(f"study entry {named}") and named in r["model_version"] for r in served)
    card = client.get("/model").json()
    digest = hashlib.sha256((study / "choices.json").read_bytes()).hexdigest()
    assert card["entry"]["name"] == named and digest[:12] in card["entry"]["study"] and "test scored" in card["entry"]["test"]
    assert float(card["metrics"]["test"]["roc_auc"]) == float(
        next(r for r in read_csv(study / "comparison.csv") if r["entry"] == named)["roc_auc"]
    )
    page = client.get("/").text
    assert f"Study entry {named}" in page and f"On test: roc auc {float(card['metrics']['test']['roc_auc']):.3f}" in page


def test_a_study_whose_runs_or_choices_changed_is_refused_naming_the_md5(study, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(study, copy)
    weights = RunDir(copy / "runs" / "mobilenet_v3_large-seed0").weights
    old = hashlib.md5(weights.read_bytes()).hexdigest()
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    capsys.readouterr()
    assert main(["score", str(copy), "--rescore"]) == 2
    said = capsys.readouterr().err
    assert "mobilenet_v3_large-seed0 weights MD5" in said and old in said and hashlib.md5(weights.read_bytes()).hexdigest() in said
    choices = copy / "choices.json"
    choices.write_text(choices.read_text().replace('"tta_views": 3', '"tta_views": 2', 1))
    assert main(["score", str(copy), "--rescore"]) == 2 and "choices.json changed since it was written" in capsys.readouterr().err
    (RunDir(copy / "runs" / "efficientnet_b0-seed0").metrics("test")).write_text("{}")  # as a run trained before sealing has
    main(["status", str(copy)])
    assert "unsealed: trained before cxrlab sealed test" in capsys.readouterr().out


def test_compare_writes_the_complete_report(study):
    md = (study / "report.md").read_text()
    assert md.splitlines()[2].startswith("> **PHANTOM")  # phantom reports say so at the top
    for section in (
        "## Headline: ",
        "## Data",
        "## Protocol",
        "## Machine",
        "## Comparison",
        "## Paired comparisons on test",
        "## Operating points: chosen without test",
        "## Refer band outcomes: on the evidence → on test",
        "## Risk against coverage",
        "## Winner per criterion",
        "## Calibration",
        "## Reproduce",
    ):
        assert section in md
    # the headline's entry is named by the evidence rule, with sensitivity, specificity, PPV and NPV on its first screen
    rows = read_csv(study / "comparison.csv")
    evidence = {name: np.mean([float(r["evidence_roc_auc"]) for r in rows if r["entry"] == name]) for name in {r["entry"] for r in rows}}
    named = md.split("## Headline: ")[1].splitlines()[0]
    assert evidence[named] == max(evidence.values())
    headline = md.split("## Headline: ")[1].split("## Data")[0]
    assert (
        all(f"| {k} |" in headline for k in ("sensitivity", "specificity", "PPV", "NPV"))
        and "interval over seeds and test resampling" in headline
    )
    assert "accuracy at 0.5 (the published convention)" in headline and all(r["accuracy_05"] for r in rows)
    assert "Label shift, estimated without labels" in md and "looks at the test images and chooses nothing" in md
    # the refer band (targets 0.9, reachable with the phantom's val): shown in the headline and recorded in every row
    assert "| referred (refer band) |" in headline and all(r["referred"] and r["rule_out"] for r in rows)
    assert all(r["confident_fp_per_100_normals"] and r["confident_misses_per_100_positives"] for r in rows)
    assert "test split (chest X-rays)" in md  # the checks' share of test, measured by the scoring step
    paired = md.split("## Paired comparisons on test")[1].split("##")[0]
    assert "seeds ahead in ROC-AUC" in paired and "differences are shown" in paired and "Bonferroni" in paired
    band = md.split("## Refer band outcomes")[1].split("##")[0]
    assert "target ≥ 0.9:" in band and band.count(" → ") >= 7 * len({r["entry"] for r in rows})
    for entry in ("| mobilenet_v3_large |", "| efficientnet_b0 |", "| efficientnet_b0 + TTA×3 |", "| ensemble |"):
        assert entry in md
    assert "Ensemble weights: seed 0:" in md and "target sensitivity 0.8" in md
    # timings say how they were taken: runs side by side, and inference on the deployed backend
    assert "ms/image (ORT fp32, batch 1)" in md and "inference columns: onnxruntime" in md
    assert "training timings (s/epoch, train s) were measured with" in md and "at a time" in md
    figures = {p.name for p in (study / "figures").iterdir()}
    assert {
        "roc_test.png",
        "pr_test.png",
        "reliability_test.png",
        "curves_efficientnet_b0.png",
        "confusion_ensemble.png",
        "grid_mobilenet_v3_large.png",
        "gradcam_efficientnet_b0.png",
        "risk_coverage_evidence.png",
        "risk_coverage_test.png",
    } <= figures
    html = (study / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= len(figures) and 'src="figures' not in html  # self-contained
    assert "PHANTOM" in html


def test_every_number_traces_to_a_run(study):
    rows = read_csv(study / "comparison.csv")
    seeds = [str(s) for s in yaml.safe_load((study / "compare.yaml").read_text())["compare"]["seeds"]]
    assert sorted((r["entry"], r["seed"]) for r in rows if r["kind"] == "model") == sorted((m, s) for m in MODELS for s in seeds)
    assert len(rows) == len(seeds) * (2 + 2 + 1)  # seeds x (models + TTA rows + ensemble)
    for row in rows:
        for run in row["runs"].split():  # named relative to the study's folder: no machine's absolute paths
            assert not Path(run).is_absolute() and (RunDir(study / run).config).is_file()
        if row["kind"] == "model":  # the run chose its own point by the study's rules on the same evidence
            val = json.loads(RunDir(study / row["runs"]).metrics("val").read_text())
            assert float(row["val_accuracy"]) == pytest.approx(val["accuracy"])
            assert float(row["threshold"]) == pytest.approx(
                json.loads(RunDir(study / row["runs"]).operating_point.read_text())["threshold"]
            )
        assert float(row["temperature"]) > 0 and 0 <= float(row["ece_calibrated"]) <= 1


def test_more_seeds_from_the_saved_config_train_only_what_is_missing_and_reproduce_the_rest(study, capsys):
    """compare.yaml with a second seed: seed 0's runs are reused and its rows come out identical (the saved config
    reproduces the study: a run whose options differed would be refused, not reused); seed 1's runs are trained."""
    timing = {"ms_per_image", "images_per_s"}  # measured again; everything else must be identical
    seed0 = [{k: v for k, v in r.items() if k not in timing} for r in read_csv(study / "comparison.csv")]
    saved = yaml.safe_load((study / "compare.yaml").read_text())
    assert saved["compare"]["seeds"] == [0] and saved["threshold"] == "sensitivity"
    saved["compare"]["seeds"] = [0, 1]
    (study / "compare.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    capsys.readouterr()
    again = ["compare", "--config", str(study / "compare.yaml"), "--no-progress", "--score-test"]
    assert main(again) == 2  # the new seed's runs are trained, but choices that differ from the scored ones are refused
    said = capsys.readouterr()
    assert said.out.count("reusing finished run") == 2 and "scored" in said.err and "--rescore" in said.err
    assert main([*again, "--rescore"]) == 0
    assert capsys.readouterr().out.count("reusing finished run") == 4
    assert "test scored 2 times (RESCORED)" in (study / "report.md").read_text()
    rows = read_csv(study / "comparison.csv")
    assert len(rows) == 2 * 5 and {r["seed"] for r in rows} == {"0", "1"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows if r["seed"] == "0"] == seed0


def test_runs_side_by_side_give_the_results_of_a_run_alone_and_a_recipe_applies_to_its_model(phantom_root, tmp_path, capfd):
    """--workers 2 trains two runs at once in spawned processes: the history and metrics a run trained alone gets.
    The recipe gives the model options of its own (here MedMNIST v2's multistep schedule, its milestone at epoch 1)."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("batch_size: 64\nlr_schedule: multistep\nlr_milestones: [1]\n")

    def run(out, workers):
        return main(
            [
                "compare",
                "--data-root",
                str(phantom_root),
                "--models",
                "mobilenet_v3_large",
                "--seeds",
                "0",
                "1",
                "--ensemble",
                "off",
                "--threads",
                "1",
                "--workers",
                str(workers),
                "--recipe",
                f"mobilenet_v3_large={recipe}",
                "--out",
                str(tmp_path / out),
                "--score-test",
                *FAST,
            ]
        )

    assert run("two", 2) == 0
    assert "[mobilenet_v3_large-seed1] epoch   1/1" in capfd.readouterr().out  # workers print one prefixed line per epoch and run
    side_by_side = RunDir(tmp_path / "two" / "runs" / "mobilenet_v3_large-seed1")
    cfg = load_config(side_by_side.config)
    alone = train(replace(cfg, out=str(tmp_path / "alone"), threads=1), progress=False)
    histories = [read_csv(run.history) for run in (side_by_side, alone)]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in histories[0]] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in histories[1]
    ]
    assert json.loads(side_by_side.metrics("val").read_text()) == json.loads(alone.metrics("val").read_text())
    assert not side_by_side.metrics("test").exists() and not alone.metrics("test").exists()  # a study's runs are sealed
    assert (cfg.batch_size, cfg.lr_schedule, cfg.lr_milestones) == (64, "multistep", [1])
    assert float(histories[0][0]["lr"]) == pytest.approx(2e-3)  # the model's own rate in epoch 1,
    assert load_state(side_by_side.last_checkpoint)["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2e-4)  # x0.1 after it
    assert "recipe of their own" in (tmp_path / "two" / "report.md").read_text()
    assert run("bad", 0) == 2 and "workers must be at least 1, got 0" in capfd.readouterr().err


def test_bad_ensemble_weights_fail_before_any_training(phantom_root, tmp_path, capsys):
    code = main(["compare", "--data-root", str(phantom_root), "--ensemble", "0.5", "0.5", "--out", str(tmp_path / "c"), *FAST])
    assert code == 2
    assert "2 ensemble weights given for 3 models" in capsys.readouterr().err
    assert not (tmp_path / "c" / "runs").exists()


def test_runs_on_different_data_are_never_mixed(study, tmp_path):
    good = RunDir(study / "runs" / "efficientnet_b0-seed0")
    other = RunDir(tmp_path / "other")
    shutil.copytree(good.path, other.path)
    summary = json.loads(other.summary.read_text())
    summary["data_md5"] = "0" * 32
    other.summary.write_text(json.dumps(summary))
    with pytest.raises(RunDirError, match="do not share data") as err:
        check_compatible([good, other])
    assert str(good.path) in str(err.value) and str(other.path) in str(err.value)


def test_a_study_shows_where_it_stands_to_a_second_shell(study, capsys):
    assert main(["status", str(study)]) == 0
    lines = capsys.readouterr().out.splitlines()
    runs = len(list((study / "runs").iterdir()))  # 2, or 4 once the seeds test has added seed 1
    assert lines[0].startswith(f"{runs}/{runs} runs finished, 0 running, 0 left") and lines[1] == "training done"
    assert sum("finished" in line and "s/epoch" in line for line in lines[2:]) == runs
    assert main(["status", str(study / "runs")]) == 2
    assert "status.json not found" in capsys.readouterr().err


def test_a_study_pointed_at_another_data_file_refuses_before_training(study, phantom_root, tmp_path, capsys):
    out = tmp_path / "moved"
    shutil.copytree(study, out, ignore=shutil.ignore_patterns("*.onnx", "figures"))
    changed = out / "runs" / "mobilenet_v3_large-seed0"
    for run in (out / "runs").iterdir():  # the copies point at the copied folder, as compare's own runs do
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "out": str(run)}))
    data = json.loads((changed / "data.json").read_text())
    (changed / "data.json").write_text(json.dumps({**data, "md5": "0" * 32}))
    shutil.rmtree(changed / "checkpoints")
    (changed / "summary.json").unlink()  # an unfinished run: it would be resumed on the other file
    assert main(compare_args(phantom_root, out, "--seeds", "0")) == 2
    err = capsys.readouterr().err
    assert "is not the one these runs were trained on" in err and str(changed) in err and "efficientnet_b0-seed0" not in err
    assert not (changed / "summary.json").exists()


def test_cross_validation_is_sealed_until_scored_and_its_fold_ensemble_answers_as_scored(phantom_root, tmp_path, capsys):
    import cxrlab

    out = tmp_path / "cv"
    args = ["cv", "--data-root", str(phantom_root), "--model", "efficientnet_b0", "--folds", "2", "--out", str(out), "--workers", "1"]
    with splits_loaded() as asked:  # one worker: every load happens here, watched
        assert main([*args, *FAST]) == 0
    assert asked and "test" not in asked
    rows = read_csv(out / "cv.csv")
    assert [r["entry"] for r in rows] == ["fold0", "fold1", "fold ensemble"] and "val_roc_auc" in rows[0]
    assert not [k for k in rows[0] if k.startswith("test")] and json.loads((out / "seal.json").read_text())["state"] == "sealed"
    for k in (0, 1):
        cfg = load_config(out / f"fold{k}" / "config.yaml")
        assert (cfg.cv_folds, cfg.cv_fold, cfg.sealed) == (2, k, True)
    fold_data = json.loads((out / "fold0" / "data.json").read_text())["counts"]
    assert sum(fold_data["train"].values()) + sum(fold_data["val"].values()) == BINARY["train"]  # the folds split train, not val
    capsys.readouterr()
    main(["status", str(out)])
    assert "test sealed: never loaded" in capsys.readouterr().out

    assert main(["score", str(out)]) == 0
    digest = hashlib.sha256((out / "choices.json").read_bytes()).hexdigest()
    report = (out / "cv.md").read_text()
    assert "mean ± sd" in report and f"SHA-256 {digest}" in report and "PHANTOM" in (out / "cv.html").read_text()
    rows = read_csv(out / "cv.csv")
    assert 0 <= float(rows[-1]["test_roc_auc"]) <= 1 and len(rows) == 3
    assert main(["score", str(out)]) == 2 and "--rescore" in capsys.readouterr().err

    entry = cxrlab.load_entry(out)  # the headline: the fold ensemble, as it was scored
    assert entry.model.name == "fold ensemble" and len(entry.model.members) == 2
    assert entry.metrics()["roc_auc"] == rows[-1]["test_roc_auc"]  # what /model and the page show
    scored = [r for r in read_csv(out / "test_answers.csv") if r["entry"] == "fold ensemble"]
    images = task_module.task_data(load_config(out / "fold0" / "config.yaml"), splits=("test",)).splits["test"].images.numpy()
    answers = entry.predict(images[:50])
    for answer, row in zip(answers, scored):
        assert answer.answer == row["answer"]
        if answer.probability is not None:
            assert abs(answer.probability - float(row["probability"])) <= 1e-6


def test_a_14_label_study_is_sealed_until_scored(phantom_root, tmp_path, capsys):
    out = tmp_path / "multi"
    args = ["compare", "--task", "multilabel", "--data-root", str(phantom_root), "--models", "mobilenet_v3_large", "--seeds", "0"]
    with splits_loaded() as asked:
        assert main([*args, "--tta", "1", "--out", str(out), "--workers", "1", *FAST]) == 0
    assert "test" not in asked and not (out / "report.md").exists()
    assert not (out / "runs" / "mobilenet_v3_large-seed0" / "metrics.json").exists()
    assert main(["predict", str(out), "x.png"]) == 2 and "its runs answer one by one" in capsys.readouterr().err
    assert main(["score", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "test scored once" in report and hashlib.sha256((out / "choices.json").read_bytes()).hexdigest() in report


def test_grid_and_optuna_search_write_results_and_a_usable_best_config(phantom_root, tmp_path, capsys):
    import optuna

    grid = tmp_path / "grid"
    assert (
        main(
            [
                "search",
                "--method",
                "grid",
                "--trials",
                "2",
                "--data-root",
                str(phantom_root),
                "--model",
                "mobilenet_v3_large",
                "--out",
                str(grid),
                *SEARCH_FAST,
            ]
        )
        == 0
    )
    trials = read_csv(grid / "search.csv")
    assert len(trials) == 2 and all(t["state"] == "complete" for t in trials)
    assert len({(t["batch"], t["lr"], t["dropout"]) for t in trials}) == 2  # two different grid points
    for t in trials:  # a trial chooses on val: test is never loaded, let alone scored
        trial = RunDir(grid / t["run"])  # named relative to the search's folder
        assert trial.metrics("val").is_file() and not trial.metrics("test").exists()
        assert set(json.loads(trial.data.read_text())["counts"]) == {"train", "val"}
    best = load_config(grid / "best.yaml")  # valid for `cxrlab train --config`
    assert best.out is None and best.batch_size in (8, 16, 32) and best.lr in (1e-3, 5e-4, 3e-4)
    assert all(t["epochs_run"] == "1" for t in trials)
    grid_study = optuna.load_study(study_name="cxrlab-grid-mobilenet_v3_large", storage=f"sqlite:///{grid / 'study.db'}")
    assert grid_study.best_params == {"batch_size": best.batch_size, "lr": best.lr, "dropout": best.dropout[0]}  # as Optuna's tools show it
    complete = grid_study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))  # not a racing worker's duplicate claim
    assert len(complete) == 2 and all(len(t.intermediate_values) == 1 for t in complete) and "params_lr" in grid_study.trials_dataframe()

    tpe = tmp_path / "tpe"
    args = [
        "search",
        "--method",
        "optuna",
        "--trials",
        "4",
        "--workers",
        "2",
        "--data-root",
        str(phantom_root),
        "--model",
        "mobilenet_v3_large",
        "--out",
        str(tpe),
        *SEARCH_FAST,
    ]
    assert main(args) == 0
    trials = read_csv(tpe / "search.csv")
    assert len(trials) == 4 and {t["state"] for t in trials} <= {"complete", "pruned"}  # the cap holds for the study, not per worker
    assert len({t["run"] for t in trials}) == 4 and (tpe / "study.db").is_file()
    tpe_study = optuna.load_study(study_name="cxrlab-optuna-mobilenet_v3_large", storage=f"sqlite:///{tpe / 'study.db'}")
    best = load_config(tpe / "best.yaml")
    assert tpe_study.best_params == {"batch_size": best.batch_size, "lr": best.lr, "dropout": best.dropout[0]}


def test_given_ensemble_weights_are_normalised_and_used(study, phantom_root):
    # runs in the shared study folder after the tests above: it reuses their runs and, rescored, rewrites the report
    assert main(compare_args(phantom_root, study, "--seeds", "0", "--ensemble", "3", "1", "--score-test", "--rescore")) == 0
    ensemble = [r for r in read_csv(study / "comparison.csv") if r["kind"] == "ensemble"]
    assert [r["weights"] for r in ensemble] == ["mobilenet_v3_large=0.75 efficientnet_b0=0.25"]
    report = (study / "report.md").read_text()
    assert "ensemble: weights 3, 1" in report and "seed 0: mobilenet_v3_large 0.75, efficientnet_b0 0.25" in report
    assert "(RESCORED)" in report


def test_a_pruned_trial_stops_after_the_epoch_the_pruner_rejects(phantom_root, tmp_path):
    import optuna

    from cxrlab.config import Config
    from cxrlab.report.search import objective

    base = Config(data_root=str(phantom_root), model="mobilenet_v3_large", epochs=3, n_bootstrap=20, device="cpu")
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.1))  # no AUC reaches 1.1
    study.optimize(objective(base, tmp_path), n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED and list(trial.intermediate_values) == [1]
    with open(tmp_path / "trials" / "trial000" / "history.csv") as fh:
        assert len(fh.readlines()) == 2  # header and the one epoch run before pruning
