"""Phantom data sets: synthetic chest-like pictures in the exact layout of the official npz files
(ChestMNIST, PneumoniaMNIST).

The real files cannot be downloaded everywhere (CI, offline machines), so tests and demos use this.
Each picture is drawn procedurally: a body, two lung fields with vessel texture, a mediastinum and a
heart shadow. Cardiomegaly enlarges the heart shadow; Pneumothorax collapses part of one lung,
leaving a dark region without lung markings and a bright pleural edge. Other ChestMNIST labels add an
opacity, so that the single-label filter has multi-label and other-label rows to drop. Pneumonia
(PneumoniaMNIST) fills parts of the lungs with patchy consolidation.

Nothing trained on this data is a result. Every file gets a ``.phantom.json`` marker beside it,
which run provenance reads, so every output made from it says PHANTOM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cxrlab.data.datafile import SPLITS, phantom_marker
from cxrlab.data.datasets import get_dataset
from cxrlab.errors import ConfigError
from cxrlab.files import atomic_output, atomic_write_json, file_md5

CHEST = get_dataset("chestmnist")
CHEST_LABELS = len(CHEST.label_names)
CARDIOMEGALY = CHEST.label_index("cardiomegaly")
PNEUMOTHORAX = CHEST.label_index("pneumothorax")
DEFAULT_SPLIT_SIZES = {"train": 2000, "val": 400, "test": 600}
# In a small phantom half the rows are single-label Cardiomegaly or Pneumothorax (1:2, as in the real
# file), so that a small file still gives a binary subset worth training on.
SMALL_BINARY_FRACTION = 0.5
NO_FINDING_FRACTION = 0.55  # of the remaining rows; ChestMNIST has about this share of rows without label
CHUNK_PIXELS = 4_000_000


def plan_labels(n: int, n_cardio: int, n_pneumo: int, rng: np.random.Generator) -> np.ndarray:
    """Label rows: exactly n_cardio / n_pneumo single-label rows, the rest no-finding, other or multi-label."""
    if n_cardio + n_pneumo > n:
        raise ConfigError(f"cannot place {n_cardio + n_pneumo} binary rows in a split of {n}")
    labels = np.zeros((n, CHEST_LABELS), dtype=np.uint8)
    labels[:n_cardio, CARDIOMEGALY] = 1
    labels[n_cardio : n_cardio + n_pneumo, PNEUMOTHORAX] = 1
    rest = np.arange(n_cardio + n_pneumo, n)
    findings = rest[rng.random(len(rest)) >= NO_FINDING_FRACTION]
    for row in findings:
        n_pos = 1 if rng.random() < 0.6 else int(rng.integers(2, 4))
        if n_pos == 1:  # a single label other than the two classes
            choices = [i for i in range(CHEST_LABELS) if i not in (CARDIOMEGALY, PNEUMOTHORAX)]
            labels[row, rng.choice(choices)] = 1
        else:  # multi-label rows, often including one of the two classes
            labels[row, rng.choice(CHEST_LABELS, size=n_pos, replace=False)] = 1
    return labels[rng.permutation(n)]


def _ellipse(x, y, cx, cy, rx, ry):
    """Normalised elliptic radius: < 1 inside, 1 on the edge."""
    return np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)


def _inside(d, sharpness):
    return 1.0 / (1.0 + np.exp(np.clip((d - 1.0) * sharpness, -30, 30)))


def _smooth_noise(rng, n, size, cells):
    low = torch.from_numpy(rng.standard_normal((n, 1, cells, cells)).astype(np.float32))
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)[:, 0].numpy()


def chest_findings(labels: np.ndarray) -> dict[str, np.ndarray]:
    """ChestMNIST label rows -> what to draw: the two classes of the default task, and any other finding."""
    others = labels.copy()
    others[:, [CARDIOMEGALY, PNEUMOTHORAX]] = 0
    return {"cardiomegaly": labels[:, CARDIOMEGALY] == 1, "pneumothorax": labels[:, PNEUMOTHORAX] == 1, "opacity": others.sum(axis=1) > 0}


def pneumonia_findings(labels: np.ndarray) -> dict[str, np.ndarray]:
    none = np.zeros(len(labels), dtype=bool)
    return {"cardiomegaly": none, "pneumothorax": none, "opacity": none, "pneumonia": labels[:, 0] == 1}


def plan_binary_labels(n: int, n_normal: int, n_pneumonia: int, rng: np.random.Generator) -> np.ndarray:
    if n_normal + n_pneumonia != n:
        raise ConfigError(f"a binary data set's split holds {n} images, not {n_normal} + {n_pneumonia}")
    labels = np.zeros((n, 1), dtype=np.uint8)
    labels[n_normal:] = 1
    return labels[rng.permutation(n)]


# Per data set: (label rows for a split with n rows and (label 0, label 1) binary-task images, what to draw).
PHANTOMS = {"chestmnist": (plan_labels, chest_findings), "pneumoniamnist": (plan_binary_labels, pneumonia_findings)}


def _draw_lungs(img: np.ndarray, x: np.ndarray, y: np.ndarray, pneumo: np.ndarray, rng: np.random.Generator, sharp: float):
    """Both lungs into ``img`` (in place), one collapsed towards its hilum where ``pneumo``; their radii."""
    n, size = img.shape[0], img.shape[1]
    col = lambda a: np.asarray(a, dtype=np.float32).reshape(n, 1, 1)  # noqa: E731 - per-image scalars
    lung_rx, lung_ry = col(rng.uniform(0.28, 0.33, n)), col(rng.uniform(0.55, 0.62, n))
    texture = 0.06 * _smooth_noise(rng, n, size, max(4, size // 4))
    side = rng.integers(0, 2, n)  # which lung collapses in a pneumothorax
    collapse = col(np.where(pneumo, rng.uniform(0.5, 0.82, n), 1.0))
    for s, cx in ((0, -0.4), (1, 0.4)):
        d = _ellipse(x, y, cx, -0.05, lung_rx, lung_ry)
        lung = _inside(d, sharp)
        collapsed_here = col(pneumo & (side == s))
        # the lung shrinks towards the hilum (medial, lower); air fills the space it leaves
        hilum_x = cx * 0.55
        shrink = np.where(collapsed_here > 0, collapse, 1.0)
        d_lung = _ellipse(x, y, hilum_x + (cx - hilum_x) * shrink, -0.05 + 0.1 * (1 - shrink), lung_rx * shrink, lung_ry * shrink)
        aerated = _inside(d_lung, sharp) * lung
        air = lung - aerated
        img -= lung * 0.3 + air * 0.12
        img += aerated * texture
        edge = np.exp(-(((d_lung - 1.0) * lung_rx * shrink * size / 1.2) ** 2)) * lung
        img += edge * collapsed_here * col(rng.uniform(0.08, 0.2, n))

    return lung_rx, lung_ry


def render(findings: dict[str, np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one uint8 (size, size) picture per row of the boolean ``findings`` arrays."""
    n = len(findings["cardiomegaly"])
    col = lambda a: np.asarray(a, dtype=np.float32).reshape(n, 1, 1)  # noqa: E731 - per-image scalars
    sharp = size / 2.5
    lin = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    gy, gx = np.meshgrid(lin, lin, indexing="ij")

    # pose: each picture is shifted, rotated and scaled a little
    angle = np.deg2rad(rng.uniform(-6, 6, n))
    scale = rng.uniform(0.9, 1.06, n)
    cos, sin = col(np.cos(angle) / scale), col(np.sin(angle) / scale)
    x0, y0 = gx[None] - col(rng.uniform(-0.07, 0.07, n)), gy[None] - col(rng.uniform(-0.06, 0.06, n))
    x, y = cos * x0 + sin * y0, -sin * x0 + cos * y0

    cardio = findings["cardiomegaly"]
    img = np.full((n, size, size), 0.04, dtype=np.float32)
    body = _inside(_ellipse(x, y, 0, 0.08, col(rng.uniform(0.8, 0.9, n)), 0.98), sharp)
    img += body * col(rng.uniform(0.5, 0.6, n))

    lung_rx, lung_ry = _draw_lungs(img, x, y, findings["pneumothorax"], rng, sharp)

    mediastinum = _inside(np.abs(x) / 0.09, sharp) * _inside(_ellipse(x, y, 0, -0.1, 0.2, 0.85), sharp)
    img += mediastinum * 0.12
    heart_rx = np.where(cardio, rng.normal(0.35, 0.04, n), rng.normal(0.26, 0.035, n)).clip(0.16, 0.48)
    heart_ry = heart_rx * rng.uniform(0.75, 0.9, n)
    heart = _inside(_ellipse(x, y, col(0.06 + 0.3 * (heart_rx - 0.26)), 0.33, col(heart_rx), col(heart_ry)), sharp)
    img += heart * col(rng.uniform(0.2, 0.3, n))

    opacity = findings["opacity"]  # any other finding: a soft patch in one lung
    patch = _inside(
        _ellipse(
            x,
            y,
            col(rng.choice([-0.38, 0.38], n)),
            col(rng.uniform(-0.4, 0.35, n)),
            col(rng.uniform(0.08, 0.2, n)),
            col(rng.uniform(0.08, 0.2, n)),
        ),
        sharp / 3,
    )
    img += patch * col(opacity * rng.uniform(0.1, 0.25, n))
    if "pneumonia" in findings:  # patchy consolidation: smooth noise above a threshold, inside the lungs
        lungs = _inside(_ellipse(np.abs(x), y, 0.4, -0.05, lung_rx, lung_ry), sharp)
        blotches = np.clip(_smooth_noise(rng, n, size, max(3, size // 7)) - col(rng.uniform(0.0, 0.8, n)), 0, None)
        img += lungs * blotches * col(findings["pneumonia"] * rng.uniform(0.12, 0.25, n))

    contrast, brightness = col(rng.uniform(0.8, 1.2, n)), col(rng.uniform(-0.06, 0.06, n))
    img = (img - 0.3) * contrast + 0.3 + brightness
    img += rng.standard_normal(img.shape, dtype=np.float32) * col(rng.uniform(0.02, 0.05, n))
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def generate(
    size: int = 28, official_counts: bool = False, seed: int = 0, split_sizes: dict | None = None, dataset: str = "chestmnist"
) -> dict[str, np.ndarray]:
    """Arrays for every split, keyed like the official file (``train_images``, ``train_labels``, ...)."""
    if official_counts and split_sizes:
        raise ConfigError("choose either official counts or explicit split sizes, not both")
    spec = get_dataset(dataset)
    plan, findings = PHANTOMS[spec.flag]
    sizes = spec.split_sizes if official_counts else {**DEFAULT_SPLIT_SIZES, **(split_sizes or {})}
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in SPLITS:
        n = int(sizes[split])
        if official_counts:
            n_first, n_second = spec.official_binary_counts[split]
        else:  # the official balance of the binary task, in half of the rows of a multi-label set and all rows of a binary set
            n_binary = round(n * SMALL_BINARY_FRACTION) if spec.binary_task == "two-labels" else n
            official = spec.official_binary_counts["train"]
            n_first = round(n_binary * official[0] / sum(official)) if spec.binary_task == "all-images" else n_binary // 3
            n_second = n_binary - n_first
        labels = plan(n, n_first, n_second, rng)
        chunk = max(1, CHUNK_PIXELS // (size * size))
        images = np.empty((n, size, size), dtype=np.uint8)
        for start in range(0, n, chunk):
            images[start : start + chunk] = render(findings(labels[start : start + chunk]), size, rng)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return arrays


def write_phantom(
    out: str | Path,
    size: int = 28,
    official_counts: bool = False,
    seed: int = 0,
    split_sizes: dict | None = None,
    dataset: str = "chestmnist",
) -> Path:
    """Write ``DATASET[_SIZE].npz`` and its phantom marker into ``out``; return the npz path."""
    out = Path(out).expanduser()
    path = out / get_dataset(dataset).file_name(size)
    arrays = generate(size, official_counts, seed, split_sizes, dataset)
    with atomic_output(path) as fh:
        np.savez(fh, **arrays)  # uncompressed, so that large sizes can be memory-mapped
    atomic_write_json(
        phantom_marker(path),
        {
            "generator": "cxrlab phantom",
            "dataset": dataset,
            "warning": "synthetic data for tests and demos; nothing measured on it is a result",
            "size": size,
            "seed": seed,
            "official_counts": official_counts,
            "split_sizes": {s: int(arrays[f"{s}_labels"].shape[0]) for s in SPLITS},
            "md5": file_md5(path),
        },
    )
    return path
