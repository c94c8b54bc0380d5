"""Shared fixtures: small phantom files, written once per test session."""

from __future__ import annotations

import pytest
import torch

from cxrlab.config import Config
from cxrlab.data.phantom import write_phantom

torch.set_num_threads(2)

SMALL = {"train": 1200, "val": 300, "test": 300}  # half are binary-task rows: 600 / 150 / 150 images


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    write_phantom(root, size=28, seed=0, split_sizes=SMALL)
    return root


@pytest.fixture
def quick_config(phantom_root, tmp_path):
    """A config that trains in seconds: small phantom, few epochs, few bootstrap resamples."""
    return Config(data_root=str(phantom_root), epochs=2, batch_size=32, n_bootstrap=50, out=str(tmp_path / "run"), device="cpu")


@pytest.fixture(scope="session")
def exported_run(phantom_root, tmp_path_factory):
    """A run trained until its outputs vary (exports can only be checked on such a model), exported to ONNX.
    EfficientNet-B0: MobileNetV3's eval-mode outputs stay constant in runs this short (see README)."""
    from cxrlab.evaluation.inference import load_trained
    from cxrlab.export.onnx import export_onnx
    from cxrlab.training.loop import train

    no_aug = dict(aug_rotation=0.0, aug_translate=0.0, aug_hflip=0.0, aug_brightness=0.0, aug_contrast=0.0, aug_blur=False)
    cfg = Config(data_root=str(phantom_root), model="efficientnet_b0", epochs=4, lr=1e-3, batch_size=32, n_bootstrap=50,
                 threshold="youden", device="cpu", out=str(tmp_path_factory.mktemp("served") / "run"), **no_aug)
    run = train(cfg, progress=False, echo=lambda _: None)
    export_onnx(load_trained(run.path, "cpu"), echo=lambda _: None)
    return run.path


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
