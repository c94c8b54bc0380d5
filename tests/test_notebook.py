"""notebooks/cxrlab_study.ipynb top to bottom on phantom data (its parameter cell overridden, as papermill does),
and without the data file: the CLI's message, not a traceback. The committed notebook carries no outputs."""

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest
import yaml
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "cxrlab_study.ipynb"


def with_parameters(**values) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in values.items())
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    return nb


def run(nb: nbformat.NotebookNode, folder: Path) -> nbformat.NotebookNode:
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    return nb


def test_the_committed_notebook_has_no_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)


def test_the_notebook_runs_top_to_bottom_on_phantom_data(learned_run, tmp_path):
    """Every cell runs. The study folder starts with the suite's shared EfficientNet-B0 run in it (its options are the
    notebook's here), so compare reuses it, as it reuses any finished run, instead of training it again; the export
    files are removed first, so the notebook's own export makes them."""
    study_run = tmp_path / "runs" / "notebook" / "runs" / "efficientnet_b0-seed0"
    shutil.copytree(learned_run.path, study_run, ignore=shutil.ignore_patterns("*.onnx", "export.json", "quantization.json", "bench.json"))
    config = yaml.safe_load((study_run / "config.yaml").read_text())
    (study_run / "config.yaml").write_text(yaml.safe_dump({**config, "out": str(study_run)}, sort_keys=False))
    options = {
        k: config[k]
        for k in (
            "batch_size",
            "lr",
            "n_bootstrap",
            "device",
            "threshold",
            "select_metric",
            "aug_rotation",
            "aug_translate",
            "aug_hflip",
            "aug_brightness",
            "aug_contrast",
            "aug_blur",
        )
    }
    nb = run(
        with_parameters(
            DATA_ROOT=config["data_root"],
            DOWNLOAD=False,
            MODELS=["efficientnet_b0"],
            SEEDS=[0],
            EPOCHS=config["epochs"],
            TTA=2,
            QUANTIZE=False,
            OPTIONS=options,
        ),
        tmp_path,
    )
    text = "\n".join(o.get("text", "") + json.dumps(o.get("data", {})) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "running on the CPU" in text and "PHANTOM" in text and "reusing finished run" in text
    assert "<iframe srcdoc=" in text  # the report, inline
    assert "predicted" in text and "image/png" in text  # Grad-CAM overlays shown
    assert (tmp_path / "runs" / "notebook" / "report.html").is_file()
    assert (study_run / "model.onnx").is_file() and (study_run / "export.json").is_file()
    last = nb.cells[-1].outputs[0]["text"]
    # the answer for an image file: a class or "refer" (with its reason), and the probability
    assert re.search(r"test0_\w+\.png: (pneumothorax|cardiomegaly|refer), P\(pneumothorax\) = [01]\.\d{3}", last), last


def test_without_the_data_file_the_notebook_shows_the_message_not_a_traceback(tmp_path):
    nb = with_parameters(DATASET="pneumoniamnist", DATA_ROOT=str(tmp_path), DOWNLOAD=False)
    with pytest.raises(CellExecutionError) as err:
        run(nb, tmp_path)
    message = str(err.value)
    assert "DataNotFoundError: PneumoniaMNIST data not found" in message and "md5:" in message
    assert "Traceback (most recent call last)" not in message and "site-packages" not in message
