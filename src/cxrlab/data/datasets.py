"""The data sets cxrlab reads: one entry each, as medmnist's ``INFO`` has one entry per flag.

medmnist's ``INFO`` stays the single source of file names per size, URLs, MD5s, label names and split sizes.
An entry here adds only what cxrlab needs beyond it: how the binary task is built, its default classes,
the class counts of that task in the official 28 px file (for phantom files with official counts), and how
a full-size image is prepared the way MedMNIST prepared the data set. Adding another MedMNIST 2D binary or
multi-label set is one entry (and, for phantom files, a way to draw its classes in data/phantom.py).
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from cxrlab.errors import ConfigError


def _medmnist_info():
    """medmnist's info module without the package: ``import medmnist`` imports torch and scikit-learn (1-4 s) to
    reach a table of names and numbers, and the CLI, the config and every study worker need only the table."""
    if "medmnist.info" in sys.modules:
        return sys.modules["medmnist.info"]
    spec = importlib.util.find_spec("medmnist")  # finds the package, runs none of it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "cxrlab reads MedMNIST's file names, URLs and MD5s from the medmnist package, which is not "
            "installed here: pip install 'medmnist==3.0.2' (or pip install -e . in the cxrlab checkout)",
            name="medmnist",
        )
    location = spec.submodule_search_locations[0]
    info = importlib.util.spec_from_file_location("cxrlab._medmnist_info", Path(location) / "info.py")
    module = importlib.util.module_from_spec(info)
    info.loader.exec_module(module)
    return module


INFO = _medmnist_info().INFO

SIZES = (28, 64, 128, 224)


@dataclass(frozen=True)
class Dataset:
    flag: str  # medmnist's name: INFO key and file name stem
    binary_task: str  # "two-labels": images whose only label is one of two chosen labels; "all-images": a binary data set
    default_classes: tuple[str, str]  # label 0, label 1 of the binary task
    official_binary_counts: dict  # split -> (label 0, label 1) images of the binary task in the official 28 px file
    preprocess: str  # how MedMNIST made a square image from the source: "resize" or "center-crop" (then resize)
    # Published test results of the binary task on the official file, as (method, AUC, ACC), and where they come from.
    published: tuple = ()
    published_source: str = ""

    @property
    def info(self) -> dict:
        return INFO[self.flag]

    @property
    def title(self) -> str:
        return self.info["python_class"]  # "ChestMNIST", "PneumoniaMNIST"

    @property
    def label_names(self) -> list[str]:
        return [self.info["label"][str(i)] for i in range(len(self.info["label"]))]

    @property
    def label_columns(self) -> int:
        """Columns of the label array in the file: one per label for multi-label sets, one for binary sets."""
        return len(self.label_names) if self.multilabel else 1

    @property
    def multilabel(self) -> bool:
        return self.info["task"].startswith("multi-label")

    @property
    def split_sizes(self) -> dict[str, int]:
        return dict(self.info["n_samples"])

    def label_index(self, name: str) -> int:
        """Index of a label by name, case-insensitive."""
        wanted = name.strip().lower()
        if wanted not in self.label_names:
            raise ConfigError(f"unknown {self.title} label {name!r}; its {len(self.label_names)} labels are: {', '.join(self.label_names)}")
        return self.label_names.index(wanted)

    def check_classes(self, classes: list[str]) -> None:
        """Refuse, before anything loads, classes that this data set's binary task cannot have."""
        indices = [self.label_index(c) for c in classes]
        if self.binary_task == "all-images" and indices != [0, 1]:
            raise ConfigError(
                f"{self.title} is a binary data set: its classes are {' and '.join(self.label_names)} (label 0, label 1), "
                f"got {' and '.join(classes)}; choose the positive one with --positive-class"
            )

    def file_name(self, size: int) -> str:
        return f"{self.flag}{'' if size == 28 else f'_{size}'}.npz"

    def url_and_md5(self, size: int) -> tuple[str, str]:
        key = "" if size == 28 else f"_{size}"
        return self.info[f"url{key}"], self.info[f"MD5{key}"]


DATASETS: dict[str, Dataset] = {
    "chestmnist": Dataset(
        "chestmnist",
        "two-labels",
        ("cardiomegaly", "pneumothorax"),
        {"train": (754, 1552), "val": (97, 208), "test": (243, 439)},
        "resize",  # the NIH images are square (1024 x 1024) and were resized
    ),
    "pneumoniamnist": Dataset(
        "pneumoniamnist",
        "all-images",
        ("normal", "pneumonia"),
        {"train": (1214, 3494), "val": (135, 389), "test": (234, 390)},
        "center-crop",  # the pediatric source images are not square: MedMNIST center-cropped them, then resized
        (
            ("ResNet-18 (28)", 0.944, 0.854),
            ("ResNet-18 (224)", 0.956, 0.864),
            ("ResNet-50 (28)", 0.948, 0.854),
            ("ResNet-50 (224)", 0.962, 0.884),
            ("auto-sklearn", 0.942, 0.855),
            ("AutoKeras", 0.947, 0.878),
            ("Google AutoML Vision", 0.991, 0.946),
        ),
        "MedMNIST v2 (Yang et al., Scientific Data 2023), Table 4: test AUC and ACC, model selected on val. Their ResNets: "
        "100 epochs, Adam 1e-3 x0.1 at epochs 50 and 75, batch 128; at 28 px a 3x3 stride-1 first convolution and no "
        "stem max-pool. Their published script (MedMNIST/experiments, MedMNIST2D/train_and_eval_pytorch.py) keeps "
        "`best_model = model`, a reference to the live model, so the checkpoint it scores is the last epoch's, not the best val-AUC one",
    ),
}
DATASET_NAMES = tuple(DATASETS)


def get_dataset(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}") from None


def dataset_with_label_columns(columns: int) -> Dataset | None:
    """The data set whose files have this many label columns, when exactly one has: names a file passed as the wrong set."""
    found = [d for d in DATASETS.values() if d.label_columns == columns]
    return found[0] if len(found) == 1 else None
