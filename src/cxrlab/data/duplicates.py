"""Near-duplicate images within and across the splits of a data file: the Pearson correlation of two images' pixels
(each image centred and scaled to unit length) above a threshold. A val or test image that nearly repeats a
training image makes held-out numbers look better than they are. numpy only: `cxrlab data` stays light."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrlab.errors import ConfigError
from cxrlab.files import atomic_write_text

DEFAULT_THRESHOLD = 0.99
MAX_IMAGES = 30_000  # all pairs: about 30 s at this count on 2 CPU cores; the binary task's images stay well below
CHUNK = 2048


@dataclass(frozen=True)
class Pair:
    split_a: str
    index_a: int  # row within its split (of the task's images)
    split_b: str
    index_b: int
    correlation: float


def _unit_rows(images: np.ndarray) -> np.ndarray:
    """(N, S, S) -> (N, S*S) float32 rows centred and scaled to unit length; constant images stay zero (never matched)."""
    x = images.reshape(len(images), -1).astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def near_duplicates(splits: dict[str, np.ndarray], threshold: float = DEFAULT_THRESHOLD) -> list[Pair]:
    """Every pair of images (within a split, and across splits in the order given) whose correlation exceeds
    ``threshold``; each pair once."""
    if not 0 < threshold < 1:
        raise ConfigError(f"the near-duplicate threshold is a correlation between 0 and 1, got {threshold}")
    total = sum(len(v) for v in splits.values())
    if total > MAX_IMAGES:
        raise ConfigError(
            f"{total:,} images are too many for the all-pairs near-duplicate check (at most {MAX_IMAGES:,}); "
            "check the binary task's images instead of the multilabel task's"
        )
    rows = {name: _unit_rows(images) for name, images in splits.items()}
    names = list(rows)
    pairs = []
    for i, a in enumerate(names):
        for b in names[i:]:
            for start in range(0, len(rows[a]), CHUNK):
                sims = rows[a][start : start + CHUNK] @ rows[b].T
                if a == b:  # within a split: each pair once, never an image with itself
                    sims[np.tril_indices(sims.shape[0], k=start, m=sims.shape[1])] = 0
                for r, c in zip(*np.nonzero(sims > threshold)):
                    pairs.append(Pair(a, start + int(r), b, int(c), float(sims[r, c])))
    return pairs


def summary_lines(pairs: list[Pair], splits: dict[str, np.ndarray], threshold: float) -> list[str]:
    """Per split pair: how many near-duplicate pairs, and how many images of the later split they touch."""
    names = list(splits)
    lines = [f"near-duplicates (pixel correlation > {threshold:g} after centring), pairs per split pair:"]
    for i, a in enumerate(names):
        for b in names[i:]:
            found = [p for p in pairs if (p.split_a, p.split_b) == (a, b)]
            touched = len({p.index_b for p in found}) if a != b else len({q for p in found for q in (p.index_a, p.index_b)})
            what = f"{b} images with a near-duplicate in {a}" if a != b else f"{a} images in them"
            lines.append(f"  {a + '-' + b if a != b else a + ' within itself':<22}{len(found):>6,} pairs  ({touched:,} {what})")
    return lines


def write_pairs(pairs: list[Pair], path: str | Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["split_a", "index_a", "split_b", "index_b", "correlation"])
    writer.writerows([p.split_a, p.index_a, p.split_b, p.index_b, f"{p.correlation:.5f}"] for p in pairs)
    atomic_write_text(Path(path), buffer.getvalue())
