"""compare, cv and search end to end on phantom data: the report, run reuse, reproduction, bad input."""

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from cxrlab.cli import main
from cxrlab.config import load_config
from cxrlab.core.checkpoint import load_state
from cxrlab.core.runs import RunDir
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
        "--score-test",
        *FAST,
        *extra,
    ]


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def study(phantom_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    assert main(compare_args(phantom_root, out, "--seeds", "0")) == 0  # seed 1 is added by the seeds test below
    return out


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
        if row["kind"] == "model":
            metrics = json.loads(RunDir(study / row["runs"]).metrics("test").read_text())
            assert float(row["accuracy"]) == pytest.approx(metrics["accuracy"])
            assert float(row["roc_auc"]) == pytest.approx(metrics["roc_auc"])
            val = json.loads(RunDir(study / row["runs"]).metrics("val").read_text())
            assert val["sensitivity"] >= 0.8  # threshold rule 'sensitivity' met on val, where it was chosen
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
    assert main(["compare", "--config", str(study / "compare.yaml"), "--no-progress", "--score-test"]) == 0
    assert capsys.readouterr().out.count("reusing finished run") == 2  # seed 0's; seed 1's two runs are trained
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


def test_cross_validation_reports_folds_and_their_ensemble(phantom_root, tmp_path, capsys):
    out = tmp_path / "cv"
    assert main(["cv", "--data-root", str(phantom_root), "--model", "efficientnet_b0", "--folds", "2", "--out", str(out), *FAST]) == 0
    rows = read_csv(out / "cv.csv")
    assert [r["entry"] for r in rows] == ["fold0", "fold1", "fold ensemble"]
    for k in (0, 1):
        cfg = load_config(out / f"fold{k}" / "config.yaml")
        assert (cfg.cv_folds, cfg.cv_fold) == (2, k)
    fold_data = json.loads((out / "fold0" / "data.json").read_text())["counts"]
    assert sum(fold_data["train"].values()) + sum(fold_data["val"].values()) == BINARY["train"]  # the folds split train, not val
    assert "mean ± sd" in (out / "cv.md").read_text() and "PHANTOM" in (out / "cv.html").read_text()


def test_grid_and_optuna_search_write_results_and_a_usable_best_config(phantom_root, tmp_path, capsys):
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


def test_given_ensemble_weights_are_normalised_and_used(study, phantom_root):
    # runs in the shared study folder after the tests above: it reuses their runs and rewrites the report
    assert main(compare_args(phantom_root, study, "--seeds", "0", "--ensemble", "3", "1")) == 0
    ensemble = [r for r in read_csv(study / "comparison.csv") if r["kind"] == "ensemble"]
    assert [r["weights"] for r in ensemble] == ["mobilenet_v3_large=0.75 efficientnet_b0=0.25"]
    report = (study / "report.md").read_text()
    assert "ensemble: weights 3, 1" in report and "seed 0: mobilenet_v3_large 0.75, efficientnet_b0 0.25" in report


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
