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
