"""The two tasks on ChestMNIST.

- binary (the default): keep the images whose only positive label is one of two classes, relabelled 0/1.
- multilabel: all images and all 14 labels, the task MedMNIST's published benchmarks use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cxrlab.data.chestmnist import LABEL_NAMES, SPLITS, load_arrays, locate, provenance
from cxrlab.errors import ConfigError


def label_index(name: str) -> int:
    """Index of a ChestMNIST label by name, case-insensitive."""
    wanted = name.strip().lower()
    if wanted not in LABEL_NAMES:
        raise ConfigError(f"unknown ChestMNIST label {name!r}; the 14 labels are: {', '.join(LABEL_NAMES)}")
    return LABEL_NAMES.index(wanted)


def select_binary(labels: np.ndarray, class_indices: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose single positive label is one of ``class_indices``.

    Returns (row indices, targets) where target 0 means ``class_indices[0]`` and 1 means ``class_indices[1]``.
    Rows with no label, several labels, or only another label are dropped.
    """
    labels = np.asarray(labels)
    single = labels.sum(axis=1) == 1
    first, second = (labels[:, i] == 1 for i in class_indices)
    keep = single & (first | second)
    rows = np.flatnonzero(keep)
    return rows, second[rows].astype(np.int64)


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, S, S), kept compact (memory-mapped for large files); float on the device per batch
    targets: torch.Tensor  # binary: int64 (N,) in {0, 1}; multilabel: uint8 (N, 14)

    def __len__(self) -> int:
        return len(self.targets)

    def counts(self) -> tuple[int, ...]:
        """Images per class: (label 0, label 1) for the binary task, positives per label for multilabel."""
        if self.targets.ndim == 2:
            return tuple(int(c) for c in self.targets.sum(0, dtype=torch.int64))
        positives = int(self.targets.sum())
        return len(self) - positives, positives


@dataclass
class TaskData:
    task: str
    classes: list[str]
    size: int
    splits: dict[str, Split]
    provenance: dict = field(default_factory=dict)

    @property
    def is_phantom(self) -> bool:
        return self.provenance.get("kind") == "phantom"


def load_task(data_root: str | Path, size: int, classes: list[str], download: bool = False, splits=SPLITS, task: str = "binary") -> TaskData:
    path = locate(data_root, size, download=download)
    arrays = load_arrays(path, size, splits)
    if task == "multilabel":
        result = {s: Split(torch.from_numpy(arrays[f"{s}_images"]), torch.from_numpy(arrays[f"{s}_labels"])) for s in splits}
        return TaskData("multilabel", list(LABEL_NAMES), size, result, provenance(path, size))
    indices = tuple(label_index(c) for c in classes)
    result = {}
    for split in splits:
        rows, targets = select_binary(arrays[f"{split}_labels"], indices)
        result[split] = Split(torch.from_numpy(np.ascontiguousarray(arrays[f"{split}_images"][rows])), torch.from_numpy(targets))
    return TaskData("binary", [LABEL_NAMES[i] for i in indices], size, result, provenance(path, size))


def data_label(provenance: dict) -> str:
    """The words every output carries about where its numbers come from."""
    kind = provenance.get("kind")
    if kind == "phantom":
        return "PHANTOM data (synthetic, for tests and demos; not a result)"
    if kind == "real":
        return "ChestMNIST (official file, MD5 verified)"
    return "UNVERIFIED data (not the official ChestMNIST file)"


CV_SPLIT_SEED = 0  # the same folds for every model and seed, so fold k means the same images everywhere


def fold_view(data: TaskData, folds: int, fold: int) -> TaskData:
    """Cross-validation: fold ``fold`` of a stratified k-fold split of train becomes 'val' (selection), the other
    folds 'train'; 'test' is unchanged and the official val split stays available as 'official_val'."""
    from sklearn.model_selection import StratifiedKFold

    train = data.splits["train"]
    targets = train.targets.numpy()
    if min(np.bincount(targets, minlength=2)) < folds:
        raise ConfigError(f"{folds} folds need at least {folds} training images of each class; train has {train.counts()}")
    kept, held = list(StratifiedKFold(folds, shuffle=True, random_state=CV_SPLIT_SEED).split(np.zeros(len(targets)), targets))[fold]
    pick = lambda rows: Split(train.images[torch.from_numpy(rows)], train.targets[torch.from_numpy(rows)])  # noqa: E731
    splits = {"train": pick(kept), "val": pick(held), **{k: v for k, v in data.splits.items() if k not in ("train", "val")}}
    if "val" in data.splits:
        splits["official_val"] = data.splits["val"]
    return TaskData(data.task, data.classes, data.size, splits, data.provenance)
