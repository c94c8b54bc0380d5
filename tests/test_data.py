import json
import zipfile

import medmnist
import numpy as np
import pytest

from cxrlab.data.datafile import load_arrays, locate, provenance
from cxrlab.data.datasets import DATASETS
from cxrlab.data.phantom import CARDIOMEGALY, PNEUMOTHORAX, generate, write_phantom
from cxrlab.data.phantom import CHEST_LABELS as N_LABELS
from cxrlab.data.task import load_task, select_binary
from cxrlab.errors import ConfigError, DataFileError, DataNotFoundError


def rows(*positives):
    labels = np.zeros((len(positives), N_LABELS), dtype=np.uint8)
    for i, cols in enumerate(positives):
        labels[i, list(cols)] = 1
    return labels


def test_select_binary_keeps_only_single_label_rows_of_the_two_classes():
    c, p, other = CARDIOMEGALY, PNEUMOTHORAX, 0
    labels = rows([c], [p], [], [c, p], [c, other], [other], [p], [p, 5])
    kept, targets = select_binary(labels, (c, p))
    assert kept.tolist() == [0, 1, 6]
    assert targets.tolist() == [0, 1, 1]


def test_select_binary_class_order_sets_the_targets():
    labels = rows([CARDIOMEGALY], [PNEUMOTHORAX])
    _, targets = select_binary(labels, (PNEUMOTHORAX, CARDIOMEGALY))
    assert targets.tolist() == [1, 0]


def test_select_binary_with_an_empty_class():
    labels = rows([PNEUMOTHORAX], [PNEUMOTHORAX, 3], [])
    kept, targets = select_binary(labels, (CARDIOMEGALY, PNEUMOTHORAX))
    assert kept.tolist() == [0] and targets.tolist() == [1]
    kept, _ = select_binary(rows([], [3]), (CARDIOMEGALY, PNEUMOTHORAX))
    assert kept.size == 0


def test_label_names_are_case_insensitive_and_unknown_ones_are_named():
    assert DATASETS["chestmnist"].label_index("Cardiomegaly") == CARDIOMEGALY
    with pytest.raises(ConfigError, match="cardiomegally"):
        DATASETS["chestmnist"].label_index("cardiomegally")


def test_phantom_loads_through_medmnist_with_official_counts(tmp_path):
    write_phantom(tmp_path, official_counts=True, seed=3)
    for split, n in medmnist.INFO["chestmnist"]["n_samples"].items():
        ds = medmnist.ChestMNIST(split=split, root=str(tmp_path), download=False)
        assert len(ds) == n  # medmnist asserts the official split size here
        image, target = ds[0]
        assert image.size == (28, 28) and target.shape == (N_LABELS,)
    data = load_task(tmp_path, 28, ["cardiomegaly", "pneumothorax"])
    assert {s: data.splits[s].counts() for s in data.splits} == DATASETS["chestmnist"].official_binary_counts
    assert data.is_phantom


def test_phantom_is_deterministic_and_has_filter_work():
    a, b = generate(size=28, seed=5), generate(size=28, seed=5)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["train_images"], generate(size=28, seed=6)["train_images"])
    labels = a["train_labels"]
    assert (labels.sum(1) > 1).any(), "multi-label rows"
    assert (labels.sum(1) == 0).any(), "rows without finding"
    single_other = (labels.sum(1) == 1) & (labels[:, CARDIOMEGALY] == 0) & (labels[:, PNEUMOTHORAX] == 0)
    assert single_other.any(), "other single labels"
    assert a["train_images"].dtype == np.uint8 and labels.dtype == np.uint8


def test_phantom_at_64_px(tmp_path):
    write_phantom(tmp_path, size=64, split_sizes={"train": 40, "val": 20, "test": 20})
    assert (tmp_path / "chestmnist_64.npz").is_file()
    ds = medmnist.ChestMNIST(split="val", root=str(tmp_path), size=64, download=False)
    assert ds.imgs.shape == (20, 64, 64)


def test_provenance_tells_phantom_from_an_altered_file(tmp_path):
    path = write_phantom(tmp_path, split_sizes={"train": 20, "val": 10, "test": 10})
    assert provenance(path, 28)["kind"] == "phantom"
    arrays = dict(np.load(path))
    arrays["val_images"][0] ^= 1
    np.savez(path, **arrays)  # same layout, different content: no longer the generated file
    assert provenance(path, 28)["kind"] == "unverified"


def test_missing_file_names_file_url_md5_and_demo(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        locate(tmp_path, 28)
    text = str(err.value)
    url, md5 = DATASETS["chestmnist"].url_and_md5(28)
    assert "chestmnist.npz" in text and url in text and md5 in text and "make demo" in text


def test_failed_download_says_why_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def offline(url, root, filename, md5):
        (tmp_path / filename).parent.mkdir(exist_ok=True)
        with open(f"{root}/{filename}", "wb") as fh:
            fh.write(b"partial")
        raise OSError("network unreachable")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    with pytest.raises(DataNotFoundError, match="network unreachable"):
        locate(tmp_path, 64, download=True)
    assert list(tmp_path.iterdir()) == []


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


def _good(n=4, size=28):
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = np.zeros((n, size, size), np.uint8)
        arrays[f"{split}_labels"] = np.zeros((n, N_LABELS), np.uint8)
    return arrays


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.pop("val_labels"), "'val_labels' is missing"),
        (lambda a: a.update(train_images=np.zeros((4, 28, 28), np.float32)), "dtype float32, expected uint8"),
        (lambda a: a.update(test_images=np.zeros((4, 64, 64), np.uint8)), r"expected \(N, 28, 28\)"),
        (lambda a: a.update(train_labels=np.zeros((4, 13), np.uint8)), r"expected \(N, 14\)"),
        (lambda a: a.update(val_labels=np.full((4, N_LABELS), 2, np.uint8)), "other than 0 and 1"),
        (lambda a: a.update(val_labels=np.zeros((3, N_LABELS), np.uint8)), "4 images but 3 label rows"),
    ],
)
def test_wrongly_shaped_files_get_named_errors(tmp_path, change, message):
    arrays = _good()
    change(arrays)
    path = _write(tmp_path / "chestmnist.npz", **arrays)
    with pytest.raises(DataFileError, match=message) as err:
        load_arrays(path, 28)
    assert str(path) in str(err.value)


def test_truncated_and_non_npz_files_get_named_errors(tmp_path):
    path = _write(tmp_path / "chestmnist.npz", **_good(n=200))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError, match="chestmnist.npz"):
        load_arrays(path, 28)
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(DataFileError, match="not a readable npz archive"):
        load_arrays(path, 28)


def test_corrupt_member_inside_a_valid_zip(tmp_path):
    path = tmp_path / "chestmnist.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for key in _good():
            zf.writestr(f"{key}.npy", b"garbage")
    with pytest.raises(DataFileError, match="truncated or corrupt"):
        load_arrays(path, 28)


def test_phantom_marker_records_what_it_is(tmp_path):
    path = write_phantom(tmp_path, seed=9, split_sizes={"train": 20, "val": 10, "test": 10})
    marker = json.loads((tmp_path / "chestmnist.npz.phantom.json").read_text())
    assert marker["seed"] == 9 and "nothing measured on it is a result" in marker["warning"]
    assert marker["md5"] == provenance(path, 28)["md5"]


def test_large_files_are_memory_mapped_not_read_whole(tmp_path):
    path = write_phantom(tmp_path, size=64, split_sizes={"train": 30, "val": 10, "test": 10})
    mapped = load_arrays(path, 64, mmap=True)
    read = load_arrays(path, 64, mmap=False)
    assert isinstance(mapped["train_images"], np.memmap) and not isinstance(read["train_images"], np.memmap)
    assert all(np.array_equal(mapped[k], read[k]) for k in read)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the mapped array would run past the end of the file
    with pytest.raises(DataFileError, match="chestmnist_64.npz"):
        load_arrays(path, 64, mmap=True)
