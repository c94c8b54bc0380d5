"""Shared fixtures: small phantom files, written once per test session."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from cxrlab.config import Config
from cxrlab.data.phantom import write_phantom

torch.set_num_threads(2)


def binary_images(split_sizes: dict) -> dict:
    """The binary task's images per split of a phantom written with ``split_sizes`` rows: half of the rows."""
    return {split: rows // 2 for split, rows in split_sizes.items()}


SMALL = {"train": 800, "val": 200, "test": 200}
BINARY = binary_images(SMALL)  # 400 / 100 / 100
# For the EfficientNet-B0 runs that must have learnt in a few epochs (learned_run, the torchrun run, label smoothing):
# 600 / 150 / 150 images (benchmarks/README.md, "The test suite's time"). On SMALL,
# EfficientNet-B0's val ROC-AUC after 4 epochs was still 0.91 alone but its outputs barely varied (std 2e-4, too
# flat to check an export on), and two processes of 200 images each had not learnt (0.52).
LEARNING = {"train": 1200, "val": 300, "test": 300}


@pytest.fixture(autouse=True)
def two_torch_threads():
    """Every test starts with the thread count above: a run trained in-process with ``threads`` set changes it."""
    yield
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    write_phantom(root, size=28, seed=0, split_sizes=SMALL)
    return root


@pytest.fixture(scope="session")
def learning_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom_learning")
    write_phantom(root, size=28, seed=0, split_sizes=LEARNING)
    return root


@pytest.fixture
def quick_config(phantom_root, tmp_path):
    """A config that trains in seconds: small phantom, few epochs, few bootstrap resamples."""
    return Config(data_root=str(phantom_root), epochs=2, batch_size=32, n_bootstrap=50, out=str(tmp_path / "run"), device="cpu")


@pytest.fixture(scope="session")
def one_epoch_run(phantom_root, tmp_path_factory):
    """quick_config for one epoch, trained once per session by `cxrlab train` (the CLI tests read it as the command
    wrote it); tests that change it work on a copy."""
    from cxrlab.cli import main
    from cxrlab.core.runs import RunDir

    out = tmp_path_factory.mktemp("one_epoch") / "run"
    args = [
        "train",
        "--data-root",
        str(phantom_root),
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--n-bootstrap",
        "50",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    return RunDir(out)


@pytest.fixture(scope="session")
def learned_run(learning_root, tmp_path_factory):
    """A run trained until it has learned (the learning test asserts it) and its outputs vary (exports can only be
    checked on such a model). EfficientNet-B0, 4 epochs, no augmentation: the one trained run most tests share."""
    from cxrlab.training.loop import train

    no_aug = {"aug_rotation": 0.0, "aug_translate": 0.0, "aug_hflip": 0.0, "aug_brightness": 0.0, "aug_contrast": 0.0, "aug_blur": False}
    # Best epoch by val AUC: in 4 phantom epochs EfficientNet's first, near-constant epoch can have the lowest val loss
    # (the default rule), and a model whose outputs do not vary cannot be exported or checked.
    cfg = Config(
        data_root=str(learning_root),
        model="efficientnet_b0",
        epochs=4,
        lr=1e-3,
        batch_size=32,
        n_bootstrap=50,
        threshold="youden",
        select_metric="roc_auc",
        device="cpu",
        out=str(tmp_path_factory.mktemp("served") / "run"),
        **no_aug,
    )
    return train(cfg, progress=False)


@pytest.fixture(scope="session")
def exported_run(learned_run):
    """learned_run exported to ONNX."""
    from cxrlab.evaluation.inference import load_trained
    from cxrlab.export.onnx import export_onnx

    export_onnx(load_trained(learned_run.path, "cpu"))
    return learned_run.path


def real_data_root(flag: str):
    """The folder holding the real ``flag``.npz: $CXRLAB_DATA, else ../shared/data beside the repository; None when absent."""
    import os
    from pathlib import Path

    for root in (os.environ.get("CXRLAB_DATA"), Path(__file__).resolve().parents[2] / "shared" / "data"):
        if root and (Path(root) / f"{flag}.npz").is_file():
            return Path(root)
    return None


@pytest.fixture(scope="session")
def real_pneumonia_root():
    root = real_data_root("pneumoniamnist")
    if root is None:
        pytest.skip("the real pneumoniamnist.npz is not here (set CXRLAB_DATA to its folder)")
    return root


def band_around(run, probability: float, width: float = 0.02) -> dict:
    """Set a run's refer band (operating_point.json) to +-width around ``probability``, so that an image with that
    probability is referred: tests of where the refer answer is shown. Returns the point written."""
    import json

    from cxrlab.core.runs import RunDir

    point = json.loads(RunDir(run).operating_point.read_text())
    point.update(
        rule_out=max(probability - width, 1e-4),
        rule_in=min(probability + width, 1 - 1e-4),
        sensitivity_target=0.9,
        specificity_target=0.9,
        level=0.95,
        band_error=None,
    )
    RunDir(run).operating_point.write_text(json.dumps(point))
    return point


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run, *extra, env=None):
    """`cxrlab serve RUN` in a subprocess on a free port, its output piped: (process, url) once /health answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cxrlab", "serve", str(run), "--port", str(port), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            return process, url
        except OSError:
            if process.poll() is not None:
                pytest.fail("cxrlab serve exited: " + process.stdout.read())
            time.sleep(0.3)
    process.kill()
    pytest.fail("cxrlab serve did not answer /health within 120 s")
