"""A MedMNIST data file (ChestMNIST, PneumoniaMNIST, ...): where it lives, how it is downloaded, and checking
what is loaded from it. File names, URLs, MD5s and label columns come from the data set's entry (data/datasets.py),
which reads them from medmnist's INFO table.
"""

from __future__ import annotations

import functools
import json
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from cxrlab.data.datasets import DATASETS, Dataset, dataset_with_label_columns, get_dataset
from cxrlab.errors import DataFileError, DataNotFoundError
from cxrlab.files import file_md5

SPLITS = ("train", "val", "test")
PHANTOM_MARKER_SUFFIX = ".phantom.json"


def demo_hint(dataset: Dataset) -> str:
    flag = "" if dataset.flag == "chestmnist" else f" --dataset {dataset.flag}"
    return f"make demo   (or: cxrlab phantom{flag} --out data/phantom && cxrlab train{flag} --data-root data/phantom)"


def phantom_marker(path: Path) -> Path:
    return path.with_name(path.name + PHANTOM_MARKER_SUFFIX)


def locate(root: str | Path, size: int, download: bool = False, dataset: str = "chestmnist") -> Path:
    """Return the path of the data file, downloading it first when asked and missing."""
    spec = get_dataset(dataset)
    root = Path(root).expanduser()
    path = root / spec.file_name(size)
    if path.is_file():
        return path
    url, md5 = spec.url_and_md5(size)
    if download:
        try:
            _download(url, md5, path)
            return path
        except Exception as exc:  # network errors come in many types; all mean the same to the user
            reason = f"download failed ({type(exc).__name__}: {exc})"
    else:
        reason = "the file is missing and downloading was not asked for (--download)"
    raise DataNotFoundError(
        f"{spec.title} data not found: {path}\n"
        f"  reason: {reason}\n"
        f"  file:   {path.name}\n"
        f"  url:    {url}\n"
        f"  md5:    {md5}\n"
        f"Download it by hand (or run with --download, download=True in Python, where there is internet) and put it in {root}/\n"
        f"  (or pass --data-root DIR). Without the data, try the offline demo on phantom data:\n"
        f"  {demo_hint(spec)}"
    )


def _download(url: str, md5: str, path: Path) -> None:
    """Download to a temporary file beside the target and move it into place only when complete and verified,
    so a broken download never leaves a truncated file under the real name."""
    from torchvision.datasets.utils import download_url

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".download-") as tmp:
        download_url(url, root=tmp, filename=path.name, md5=md5)
        got = Path(tmp) / path.name
        if file_md5(got) != md5:
            raise DataFileError(f"downloaded {path.name} does not match its MD5 {md5}")
        shutil.move(str(got), path)


def _problem(path: Path, text: str) -> DataFileError:
    return DataFileError(f"{path}: {text}. Delete the file and download it again, or regenerate it with 'cxrlab phantom'.")


MMAP_FROM_SIZE = 128  # 128 and 224 px files hold 1.3 and 3.9 GB of training images


def _mmap_member(path: Path, archive: np.lib.npyio.NpzFile, key: str) -> np.ndarray | None:
    """Memory-map an npz member stored without compression; None when it is compressed.

    numpy ignores ``mmap_mode`` for npz files (so does medmnist's ``mmap_mode``, which passes it on), so
    this finds the member's .npy data inside the zip and maps it directly. Copy-on-write mode makes the
    array writeable for torch.from_numpy while pages are read from disk only when touched.
    """
    info = archive.zip.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local_header = fh.read(30)
        name_len, extra_len = struct.unpack("<HH", local_header[26:30])
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        offset = fh.tell()
    return np.memmap(path, dtype=dtype, mode="c", shape=shape, offset=offset, order="F" if fortran else "C")


def load_arrays(path: Path, size: int, splits=SPLITS, mmap: bool | None = None, dataset: str = "chestmnist") -> dict[str, np.ndarray]:
    """Load and validate ``{split}_images`` / ``{split}_labels`` from the npz file of ``dataset``.

    Images are memory-mapped when ``mmap`` (default: for sizes of 128 and up) and the member is stored
    uncompressed; labels are always read into memory. Raises DataFileError naming the file and the problem.
    """
    spec = get_dataset(dataset)
    mmap = size >= MMAP_FROM_SIZE if mmap is None else mmap
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise _problem(path, f"not a readable npz archive ({type(exc).__name__}: {exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise _problem(path, "holds a single array, not an npz archive of splits")
    arrays: dict[str, np.ndarray] = {}
    with archive:
        for split in splits:
            for kind in ("images", "labels"):
                key = f"{split}_{kind}"
                if key not in archive.files:
                    raise _problem(path, f"key {key!r} is missing (found: {', '.join(sorted(archive.files)) or 'none'})")
                try:
                    mapped = _mmap_member(path, archive, key) if mmap and kind == "images" else None
                    arrays[key] = archive[key] if mapped is None else mapped
                except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
                    raise _problem(path, f"array {key!r} is truncated or corrupt ({type(exc).__name__}: {exc})") from None
                if not isinstance(arrays[key], np.ndarray):  # numpy hands back raw bytes for non-.npy members
                    raise _problem(path, f"array {key!r} is truncated or corrupt (not in .npy format)")
            _check_split(path, split, arrays[f"{split}_images"], arrays[f"{split}_labels"], size, spec)
    return arrays


def _check_split(path: Path, split: str, images: np.ndarray, labels: np.ndarray, size: int, spec: Dataset) -> None:
    if images.dtype != np.uint8:
        raise _problem(path, f"{split}_images has dtype {images.dtype}, expected uint8")
    if images.ndim != 3 or images.shape[1:] != (size, size):
        raise _problem(path, f"{split}_images has shape {images.shape}, expected (N, {size}, {size}) for size {size}")
    if labels.ndim != 2 or labels.shape[1] != spec.label_columns:
        other = dataset_with_label_columns(labels.shape[1]) if labels.ndim == 2 else None
        hint = f"; this looks like a {other.title} file (use --dataset {other.flag})" if other and other is not spec else ""
        raise DataFileError(
            f"{path} is not a {spec.title} file: {split}_labels has shape {labels.shape}, expected (N, {spec.label_columns}) "
            f"for {spec.title}'s {len(spec.label_names)} labels ({', '.join(spec.label_names)}){hint}"
        )
    if labels.shape[0] != images.shape[0]:
        raise _problem(path, f"{split} has {images.shape[0]} images but {labels.shape[0]} label rows")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise _problem(path, f"{split}_labels holds values other than 0 and 1")


@functools.lru_cache(maxsize=8)
def _md5_of(path: str, file_size: int, mtime_ns: int) -> str:
    """MD5 once per file version: compare and evaluate load the same file several times in one process."""
    return file_md5(Path(path))


def provenance(path: Path, size: int, dataset: str = "chestmnist") -> dict:
    """What a run records about its data: the data set, the file, its checksum, and whether it is real or phantom."""
    spec = get_dataset(dataset)
    stat = path.stat()
    md5 = _md5_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    official_md5 = spec.url_and_md5(size)[1]
    for other in DATASETS.values():
        if other is not spec and md5 == other.url_and_md5(size)[1]:
            raise DataFileError(f"{path} is the official {other.title} file, not {spec.title}: use --dataset {other.flag}")
    marker = phantom_marker(path)
    if md5 == official_md5:
        kind = "real"
    elif marker.is_file() and json.loads(marker.read_text()).get("md5") == md5:
        kind = "phantom"
    else:
        kind = "unverified"  # neither the official file nor one cxrlab generated
    info = {"dataset": spec.flag, "kind": kind, "file": str(path.resolve()), "md5": md5, "official_md5": official_md5, "size": size}
    if kind == "phantom":
        info["phantom"] = json.loads(marker.read_text())
    return info
