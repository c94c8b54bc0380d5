"""Acquisition-like corruptions and the robustness table on val."""

import json

import numpy as np

from cxrlab.cli import main
from cxrlab.data.corruptions import CORRUPTIONS, corrupt
from tests.test_studies import read_csv


def test_every_corruption_keeps_the_image_layout_and_grows_with_its_severity():
    images = np.random.default_rng(0).integers(40, 215, (16, 28, 28), dtype=np.uint8)
    images[:, 8:20, 8:20] = 230  # an edge for blur and pixelation to act on
    for name in CORRUPTIONS:
        mild, hard = corrupt(images, name, 1), corrupt(images, name, 5)
        assert mild.dtype == np.uint8 and hard.shape == images.shape, name
        change = [np.abs(c.astype(float) - images).mean() for c in (mild, hard)]
        assert change[1] > change[0] > 0, (name, change)
    assert np.array_equal(corrupt(images, "gaussian_noise", 3, seed=1), corrupt(images, "gaussian_noise", 3, seed=1))


def test_the_robustness_table_holds_every_corruption_and_severity_on_val(learned_run, tmp_path, capsys):
    assert main(["robustness", str(learned_run.path), "--out", str(tmp_path)]) == 0
    rows = read_csv(tmp_path / "robustness.csv")
    assert len(rows) == 1 + 5 * len(CORRUPTIONS) and rows[0]["corruption"] == "none"
    val = json.loads((learned_run.path / "metrics_val.json").read_text())
    assert abs(float(rows[0]["roc_auc"]) - val["roc_auc"]) < 1e-9  # the clean row is the run's own val
    worst = min(float(r["roc_auc"]) for r in rows[1:])
    assert worst < float(rows[0]["roc_auc"]) and "| gamma_down |" in (tmp_path / "robustness.md").read_text()
    assert "clean val: ROC-AUC" in capsys.readouterr().out


def test_the_corruption_augmentation_is_off_by_default_and_changes_a_batch_when_asked():
    import torch

    from cxrlab.config import Config
    from cxrlab.data.augment import AugmentSettings, training_batch

    images = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (32, 28, 28), dtype=np.uint8))
    assert AugmentSettings.from_config(Config()).corruptions == 0.0
    batch = {
        p: training_batch(images, AugmentSettings(corruptions=p), torch.Generator().manual_seed(0), 0.5, 0.25, "cpu") for p in (0.0, 1.0)
    }
    assert torch.equal(batch[0.0], (images[:, None].float() / 255 - 0.5) / 0.25)  # off: the images as they were
    changed = (batch[1.0] != batch[0.0]).flatten(1).any(dim=1)
    assert changed.float().mean() > 0.9  # every image corrupted (a mild one may leave a noisy image's bytes unchanged)
