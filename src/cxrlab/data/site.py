"""A site's images, as `cxrlab site` reads them: unlabelled (files, folders of files, an npz of images) or labelled
(a CSV of file and label, or an npz of images and labels). Every file is untrusted: image files go through the
bounded decoders (``load``: the answering model's), an npz is bounded in bytes and read without pickles, and each
image that cannot be used is named with its reason while the rest go on."""

from __future__ import annotations

import csv
import hashlib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrlab.errors import ConfigError, DataFileError, ImageFileError

MAX_NPZ_BYTES = 2 << 30  # decompressed members of one npz, all together
MAX_CSV_ROWS = 1_000_000


@dataclass
class SiteImages:
    names: list[str]
    images: np.ndarray  # uint8 (N, S, S) at the model's size
    targets: np.ndarray | None = None  # 1: the positive class (labelled sets)
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (name, why)

    def exclude(self, keep: np.ndarray, why: list[str]) -> SiteImages:
        """The set without the rows ``keep`` is False for, each named with its reason."""
        dropped = [(n, w) for n, w, k in zip(self.names, why, keep) if not k]
        targets = None if self.targets is None else self.targets[keep]
        return SiteImages([n for n, k in zip(self.names, keep) if k], self.images[keep], targets, self.excluded + dropped)


def stratified_half(targets: np.ndarray, rng) -> np.ndarray:
    """A stratified half of a labelled set (True: in it): half of each class, drawn by ``rng``."""
    half = np.zeros(len(targets), dtype=bool)
    for c in (0, 1):
        rows = rng.permutation(np.flatnonzero(targets == c))
        half[rows[: len(rows) // 2]] = True
    return half


def read_npz(path: Path, size: int, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named arrays of an untrusted npz: no pickles, members bounded before they are read, images (N, size,
    size) uint8."""
    try:
        with zipfile.ZipFile(path) as archive:
            total = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataFileError(f"{path}: not a readable npz file ({exc})") from None
    if total > MAX_NPZ_BYTES:
        raise DataFileError(f"{path}: its arrays hold {total / 2**30:.1f} GiB, over the {MAX_NPZ_BYTES / 2**30:.0f} GiB accepted")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise DataFileError(f"{path}: no array {', '.join(missing)} (it holds {', '.join(npz.files) or 'none'})")
            arrays = {k: npz[k] for k in keys}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DataFileError(f"{path}: cannot read its arrays ({exc})") from None
    images = arrays[keys[0]]
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (size, size):
        raise DataFileError(
            f"{path}: {keys[0]} must be uint8 images of {size} x {size} px, (N, {size}, {size}), as the model takes them; "
            f"found {images.dtype} {images.shape}"
        )
    return arrays


def npz_keys(split: str | None, what: str) -> str:
    return f"{split}_{what}" if split else what


def unlabelled(paths: list[str], size: int, load: Callable, split: str | None = None) -> SiteImages:
    """Images from files, folders (every file in them, in name order) and npz files (``images``, or
    ``<split>_images`` of an official-layout file)."""
    names, images, excluded = [], [], []
    for path in map(Path, paths):
        if path.suffix == ".npz":
            arrays = read_npz(path, size, (npz_keys(split, "images"),))
            found = arrays[npz_keys(split, "images")]
            names += [f"{path.name}[{i}]" for i in range(len(found))]
            images += list(found)
            continue
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            try:
                images.append(load(str(file)))
                names.append(str(file))
            except ImageFileError as exc:
                excluded.append((str(file), str(exc)))
    if not images:
        raise ConfigError(f"no usable image among {', '.join(paths)}" + (f": {excluded[0][1]}" if excluded else ""))
    return SiteImages(names, np.stack(images), None, excluded)


def labelled(path: str, size: int, classes: list[str], positive: str, load: Callable, split: str | None = None) -> SiteImages:
    """A labelled set: a CSV with columns file and label (files relative to the CSV's folder), or an npz with
    ``images`` and ``labels`` (or ``<split>_images`` and ``<split>_labels``). A label is 0/1 (1: ``classes[1]``) or a
    class name; any other is refused naming its rows. Unreadable images and repeated images (the same pixels) are
    excluded by name; a set left with one class is refused."""
    path = Path(path)
    if path.suffix == ".npz":
        keys = (npz_keys(split, "images"), npz_keys(split, "labels"))
        arrays = read_npz(path, size, keys)
        raw = arrays[keys[1]].reshape(len(arrays[keys[0]]), -1)
        if raw.shape[1] != 1:
            raise DataFileError(f"{path}: {keys[1]} must hold one label per image, found shape {arrays[keys[1]].shape}")
        found = SiteImages([f"{path.name}[{i}]" for i in range(len(raw))], arrays[keys[0]])
        labels = [str(v) for v in raw[:, 0]]
    else:
        found, labels = _csv_set(path, load)
    targets = _targets(labels, found.names, classes, positive)
    found = SiteImages(found.names, found.images, targets, found.excluded)
    digests = [hashlib.md5(image.tobytes()).hexdigest() for image in found.images]
    first = {}
    for i, d in enumerate(digests):
        first.setdefault(d, i)
    keep = np.array([first[d] == i for i, d in enumerate(digests)], dtype=bool)
    found = found.exclude(keep, [f"the same pixels as {found.names[first[d]]} (a repeated image)" for d in digests])
    counts = np.bincount(found.targets, minlength=2)
    if counts.min() == 0:
        have = positive if counts[1] else next(c for c in classes if c != positive)
        raise ConfigError(f"{path}: every usable image is labelled {have}; a site's operating point needs both classes")
    return found


def _csv_set(path: Path, load: Callable) -> tuple[SiteImages, list[str]]:
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataFileError(f"{path}: not a readable CSV ({exc})") from None
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise DataFileError(f"{path}: needs the columns file and label, one row per image")
    if len(rows) > MAX_CSV_ROWS:
        raise DataFileError(f"{path}: {len(rows)} rows, over the {MAX_CSV_ROWS} accepted")
    names, images, labels, excluded = [], [], [], []
    for row in rows:
        file = path.parent / row["file"]
        try:
            images.append(load(str(file)))
        except ImageFileError as exc:
            excluded.append((row["file"], str(exc)))
            continue
        names.append(row["file"])
        labels.append(row["label"])
    if not images:
        raise ConfigError(f"{path}: no usable image" + (f" ({excluded[0][0]}: {excluded[0][1]})" if excluded else ""))
    return SiteImages(names, np.stack(images), None, excluded), labels


def _targets(labels: list[str], names: list[str], classes: list[str], positive: str) -> np.ndarray:
    as_class = {"0": classes[0], "1": classes[1], **{c: c for c in classes}}
    bad = [f"{n} ({label!r})" for n, label in zip(names, labels) if label.strip() not in as_class]
    if bad:
        raise ConfigError(
            f"labels must be 0/1 (1: {classes[1]}) or a class name ({', '.join(classes)}); {len(bad)} are not: {', '.join(bad[:10])}"
            + (" ..." if len(bad) > 10 else "")
        )
    return np.array([as_class[label.strip()] == positive for label in labels], dtype=np.int64)
