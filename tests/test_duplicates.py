"""Near-duplicates within and across splits: planted copies (brightness and noise changed) are found, each pair once,
and nothing else; constant images never match; the real PneumoniaMNIST file's counts are those the results state."""

import numpy as np
import pytest

from cxrlab.cli import main
from cxrlab.data.duplicates import near_duplicates
from cxrlab.errors import ConfigError


def test_planted_near_duplicates_are_found_once_each():
    rng = np.random.default_rng(0)
    smooth = lambda n: np.cumsum(np.cumsum(rng.normal(0, 1, (n, 28, 28)), 1), 2)  # noqa: E731 - distinct textured images
    to_uint8 = lambda x: np.clip((x - x.min()) / np.ptp(x) * 200 + 20, 0, 255).astype(np.uint8)  # noqa: E731
    train = np.stack([to_uint8(x) for x in smooth(40)])
    val = np.stack([to_uint8(x) for x in smooth(10)])
    val[3] = np.clip(train[7].astype(int) + 12 + rng.integers(-2, 3, (28, 28)), 0, 255)  # brighter, slightly noisy copy
    train[30] = train[5]  # an exact copy inside train
    val[9] = 128  # constant: correlation undefined, never a duplicate
    val[8] = 128
    pairs = near_duplicates({"train": train, "val": val})
    assert sorted((p.split_a, p.index_a, p.split_b, p.index_b) for p in pairs) == [("train", 5, "train", 30), ("train", 7, "val", 3)]
    assert all(p.correlation > 0.99 for p in pairs)
    with pytest.raises(ConfigError, match="threshold is a correlation"):
        near_duplicates({"train": train}, 1.5)


def test_real_pneumoniamnist_near_duplicates(real_pneumonia_root, capsys, tmp_path):
    root = real_pneumonia_root
    out = tmp_path / "pairs.csv"
    assert main(["data", "--dataset", "pneumoniamnist", "--data-root", str(root), "--duplicates", "--duplicates-csv", str(out)]) == 0
    text = capsys.readouterr().out
    assert "train within itself       18 pairs" in text and "(8 val images with a near-duplicate in train)" in text
    assert "train-test                 0 pairs" in text
    assert len(out.read_text().splitlines()) == 1 + 31
