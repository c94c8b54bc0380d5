"""The tasks on a data set (data/datasets.py says which apply).

- binary (the default). ChestMNIST: keep the images whose only positive label is one of two classes,
  relabelled 0/1. PneumoniaMNIST (a binary data set): every image, with its own label (normal 0, pneumonia 1).
- multilabel (multi-label sets: ChestMNIST): all images and all 14 labels, the task MedMNIST's published
  benchmarks use.

The task is selected with numpy alone (``task_arrays``: what `cxrlab data` prints, without importing torch);
``load_task`` wraps the same arrays as tensors, without copying, for training and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxrlab.data.datafile import SPLITS, load_arrays, locate, provenance
from cxrlab.data.datasets import Dataset, get_dataset
from cxrlab.errors import ConfigError

if TYPE_CHECKING:
    import torch


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
        return class_counts(self.targets.numpy())


def class_counts(targets: np.ndarray) -> tuple[int, ...]:
    """(label 0, label 1) images of binary targets (N,); positives per label of multilabel targets (N, labels)."""
    if targets.ndim == 2:
        return tuple(int(c) for c in targets.sum(0, dtype=np.int64))
    positives = int(targets.sum())
    return len(targets) - positives, positives


@dataclass
class TaskData:
    task: str
    classes: list[str]
    size: int
    splits: dict[str, Split]
    provenance: dict = field(default_factory=dict)

    @property
    def is_phantom(self) -> bool:
        return is_phantom(self.provenance)

    @property
    def label(self) -> str:
        """Where the numbers come from, in the words every output uses (data_label)."""
        return data_label(self.provenance)


@dataclass
class TaskArrays:
    """The task as numpy arrays: per split (uint8 images (N, S, S), targets), as TaskData holds them as tensors."""

    task: str
    classes: list[str]
    size: int
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    provenance: dict


def task_arrays(
    data_root: str | Path,
    size: int,
    classes: list[str],
    download: bool = False,
    splits=SPLITS,
    task: str = "binary",
    dataset: str = "chestmnist",
) -> TaskArrays:
    spec = get_dataset(dataset)
    if task == "multilabel" and not spec.multilabel:
        raise ConfigError(f"{spec.title} has one binary label per image: use the binary task")
    if task == "binary":
        spec.check_classes(classes)
    path = locate(data_root, size, download=download, dataset=dataset)
    arrays = load_arrays(path, size, splits, dataset=dataset)
    source = provenance(path, size, dataset)
    if task == "multilabel":
        return TaskArrays("multilabel", spec.label_names, size, {s: (arrays[f"{s}_images"], arrays[f"{s}_labels"]) for s in splits}, source)
    indices = tuple(spec.label_index(c) for c in classes)
    result = {}
    for split in splits:
        rows, targets = binary_rows(spec, arrays[f"{split}_labels"], indices)
        result[split] = (arrays[f"{split}_images"] if rows is None else np.ascontiguousarray(arrays[f"{split}_images"][rows]), targets)
    return TaskArrays("binary", [spec.label_names[i] for i in indices], size, result, source)


def load_task(
    data_root: str | Path,
    size: int,
    classes: list[str],
    download: bool = False,
    splits=SPLITS,
    task: str = "binary",
    dataset: str = "chestmnist",
) -> TaskData:
    import torch

    selected = task_arrays(data_root, size, classes, download, splits, task, dataset)
    tensors = {s: Split(torch.from_numpy(images), torch.from_numpy(targets)) for s, (images, targets) in selected.splits.items()}
    return TaskData(selected.task, selected.classes, size, tensors, selected.provenance)


def task_data(cfg, splits=SPLITS, download: bool = False, task: str | None = None) -> TaskData:
    """The task a config describes (data set, size, classes, task), loaded from its data root."""
    return load_task(cfg.data_root, cfg.size, cfg.classes, download=download, splits=splits, task=task or cfg.task, dataset=cfg.dataset)


def binary_rows(spec: Dataset, labels: np.ndarray, class_indices: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray]:
    """(rows to keep or None for all, 0/1 targets) of the binary task on this data set."""
    if spec.binary_task == "all-images":
        return None, np.asarray(labels[:, 0], dtype=np.int64)
    return select_binary(labels, class_indices)


def is_phantom(provenance: dict) -> bool:
    """Whether a run's data (its provenance, as in data.json) is a phantom file cxrlab generated."""
    return provenance.get("kind") == "phantom"


def data_label(provenance: dict) -> str:
    """The words every output carries about where its numbers come from."""
    title = get_dataset(provenance.get("dataset", "chestmnist")).title
    if is_phantom(provenance):
        return f"PHANTOM data (synthetic {title} layout, for tests and demos; not a result)"
    if provenance.get("kind") == "real":
        return f"{title} (official file, MD5 verified)"
    return f"UNVERIFIED data (not the official {title} file)"


def is_real(data_label: str) -> bool:
    """Whether a label written by ``data_label`` names the official file (figures draw the others in red)."""
    return not data_label.startswith(("PHANTOM", "UNVERIFIED"))


CV_SPLIT_SEED = 0  # the same folds for every model and seed, so fold k means the same images everywhere


def fold_view(data: TaskData, folds: int, fold: int) -> TaskData:
    """Cross-validation: fold ``fold`` of a stratified k-fold split of train becomes 'val' (selection), the other
    folds 'train'; 'test' is unchanged and the official val split stays available as 'official_val'."""
    import torch
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
