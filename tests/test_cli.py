"""The command line end to end on phantom data, as a user would run it."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cxrlab.cli import COMMANDS, main
from tests.conftest import BINARY


@pytest.fixture(scope="module")
def trained_run(one_epoch_run):
    return one_epoch_run.path  # `cxrlab train` of conftest's one-epoch run


def test_every_command_has_help_with_examples(capsys):
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_phantom_then_data_prints_counts_and_says_phantom(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path), "--train", "300", "--val", "60", "--test", "60", "--seed", "2"]) == 0
    assert "PHANTOM" in capsys.readouterr().out
    assert main(["data", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "PHANTOM" in out and "cardiomegaly" in out
    train_line = next(line for line in out.splitlines() if line.startswith("train"))
    assert train_line.split()[1:] == ["50", "100", "150"]  # half of 300 rows, 1:2


def test_train_writes_a_complete_run_directory(trained_run):
    names = {p.relative_to(trained_run).as_posix() for p in trained_run.rglob("*") if p.is_file()}
    expected = {
        "config.yaml",
        "data.json",
        "history.csv",
        "checkpoints/last.pt",
        "model.safetensors",
        "summary.json",
        "metrics.json",
        "metrics_val.json",
        "plots/curves.png",
        "plots/confusion_test.png",
        "plots/roc_test.png",
        "plots/val_grid.png",
    }
    assert expected <= names
    metrics = json.loads((trained_run / "metrics.json").read_text())
    flat = {
        "accuracy",
        "balanced_accuracy",
        "sensitivity",
        "specificity",
        "precision",
        "npv",
        "f1",
        "roc_auc",
        "pr_auc",
        "tn",
        "fp",
        "fn",
        "tp",
        "n",
        "threshold",
        "accuracy_ci_low",
        "roc_auc_ci_high",
    }
    assert flat <= set(metrics)
    assert metrics["tn"] + metrics["fp"] + metrics["fn"] + metrics["tp"] == metrics["n"] == BINARY["test"]


def test_config_file_and_flags_resolve_into_the_saved_config(phantom_root, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"data_root: {phantom_root}\nmodel: mobilenet_v3_large\nepochs: 5\naug_erasing: 0.25\n")
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--config",
                str(config),
                "--epochs",
                "1",
                "--out",
                str(out),
                "--batch-size",
                "64",
                "--n-bootstrap",
                "20",
                "--no-progress",
            ]
        )
        == 0
    )
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["aug_erasing"] == 0.25 and saved["lr"] == 2e-3
    assert saved["positive_class"] == "pneumothorax"


def test_evaluate_prints_table(trained_run, capsys):
    assert main(["evaluate", str(trained_run), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "sensitivity" in out and "PHANTOM" in out
    assert (trained_run / "metrics_val.json").exists() and (trained_run / "plots" / "roc_val.png").exists()


def test_predict_handles_any_image_and_reports_bad_files(trained_run, tmp_path, capsys):
    rgb = tmp_path / "big_rgb.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 240, 3), dtype=np.uint8)).save(rgb)
    gray16 = tmp_path / "gray16.png"
    Image.fromarray(np.linspace(0, 4000, 64 * 64).reshape(64, 64).astype(np.uint16)).save(gray16)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    code = main(["predict", str(trained_run), str(rgb), str(broken), str(gray16), str(tmp_path / "missing.png")])
    captured = capsys.readouterr()
    assert code == 1
    lines = captured.out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(rgb), str(gray16)]
    assert all(line.split("\t")[1] in ("cardiomegaly", "pneumothorax", "refer") for line in lines)  # noise: flagged, or in the refer band
    assert "broken.png" in captured.err and "missing.png: file not found" in captured.err
    assert "PHANTOM" in captured.err and f"answered by: run {trained_run.name} (" in captured.err  # the run, and
    assert captured.err.split("answered by: ")[1].splitlines()[0].endswith(", pytorch")  # no export: PyTorch answers
    assert main(["predict", str(trained_run), str(rgb)]) == 0
    assert main(["predict", str(trained_run), str(rgb), "--backend", "onnx"]) == 2
    assert "has no model.onnx; run: cxrlab export" in capsys.readouterr().err


def test_bad_input_gives_a_message_and_no_traceback(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "cxrlab", *args], capture_output=True, text=True)

    missing = run("data", "--data-root", str(tmp_path))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "chestmnist.npz" in missing.stderr and "zenodo" in missing.stderr
    (tmp_path / "chestmnist.npz").write_bytes(b"truncated")
    corrupt = run("data", "--data-root", str(tmp_path))
    assert corrupt.returncode == 2 and "Traceback" not in corrupt.stderr and "chestmnist.npz" in corrupt.stderr
    not_a_run = run("evaluate", str(tmp_path))
    assert not_a_run.returncode == 2 and "not a cxrlab run directory" in not_a_run.stderr


def test_help_status_data_and_a_wrong_run_answer_without_torch_or_scikit_learn(phantom_root, tmp_path):
    """`cxrlab --help`, `cxrlab status` and reading a config import none of the heavy libraries (they took 6-8 s);
    `cxrlab data` (numpy only) and a command given a folder that holds no run neither."""
    probe = (
        "import sys, contextlib, io\n"
        "from cxrlab.cli import main\n"
        "def quiet(argv):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        try: return main(argv)\n"
        "        except SystemExit as exit_: return exit_.code\n"
        "def heavy(names): return [m for m in names if m in sys.modules]\n"
        "codes = [quiet(argv) for argv in (['--help'], ['train', '--help'], ['status', sys.argv[1]])]\n"
        "from cxrlab.config import Config\n"
        "Config(dataset='pneumoniamnist').validate()\n"
        "light = heavy(('torch', 'sklearn', 'medmnist', 'matplotlib', 'numpy'))\n"
        "codes += [quiet(['data', '--data-root', sys.argv[2]]), quiet(['evaluate', sys.argv[1]])]\n"
        "print(codes, light, heavy(('torch', 'sklearn', 'medmnist', 'matplotlib')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path), str(phantom_root)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip() == "[0, 0, 2, 0, 2] [] []", out  # status of a folder without a study and evaluate of a folder without a run: exit 2


@pytest.mark.parametrize(
    "command", [["compare", "--workers", "2"], ["cv", "--folds", "2", "--workers", "2"], ["search", "--trials", "2", "--workers", "2"]]
)
def test_a_study_without_its_data_says_so_once_before_any_worker_starts(tmp_path, capsys, command):
    assert main([*command, "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("data not found") == 1 and "--download" in err
