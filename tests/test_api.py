"""The Python API a notebook uses: the same validation and messages as the CLI, runs that show what they are,
predictions from files and arrays, figures as files and matplotlib figures, and MLflow tracking."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import cxrlab
from cxrlab import api
from cxrlab.errors import ConfigError, DataNotFoundError, RunDirError
from tests.conftest import BINARY


def test_config_validates_like_the_cli_and_follows_the_data_set():
    assert api.config(dataset="pneumoniamnist").classes == ["normal", "pneumonia"]
    assert api.config(cxrlab.Config(epochs=3), dataset="pneumoniamnist").classes == ["normal", "pneumonia"]
    with pytest.raises(ConfigError, match="unknown option"):
        api.config(epoch=3)
    with pytest.raises(ConfigError, match="unknown model 'vgg16'"):
        api.config(model="vgg16")


def test_data_gives_the_splits_and_a_missing_file_the_clis_message(phantom_root, tmp_path):
    data = cxrlab.load_data(data_root=str(phantom_root))
    assert data.classes == ["cardiomegaly", "pneumothorax"] and data.is_phantom
    assert {k: len(v) for k, v in data.splits.items()} == BINARY
    with pytest.raises(DataNotFoundError) as err:
        cxrlab.load_data(dataset="pneumoniamnist", data_root=str(tmp_path))
    message = str(err.value)
    assert "pneumoniamnist.npz" in message and "zenodo" in message.lower() and "md5:" in message and "download=True" in message
    # in a notebook, IPython shows this instead of a traceback
    assert err.value._render_traceback_() == [f"DataNotFoundError: {message}"]


def test_a_run_shows_provenance_best_epoch_and_metrics(learned_run):
    run = cxrlab.load_run(learned_run.path)
    text = repr(run)
    assert "efficientnet_b0" in text and "PHANTOM" in text and "best epoch" in text and "roc_auc" in text
    html = run._repr_html_()
    assert "<table>" in html and "crimson" in html  # phantom provenance in red, as in the plots
    assert run.metrics("test") == json.loads(learned_run.metrics("test").read_text())
    history = run.history
    assert len(history) == 4 and history["epoch"] == [1, 2, 3, 4] and "<table>" in history._repr_html_()
    assert {"curves", "confusion_test", "roc_test"} <= set(run.plots)
    figure = run.figures["curves"]
    assert type(figure).__name__ == "Figure" and figure.axes[0].images
    with pytest.raises(RunDirError):
        cxrlab.load_run(learned_run.path.parent / "missing")


def test_predict_takes_files_and_arrays_alike_and_explain_writes_overlays(learned_run, tmp_path):
    run = cxrlab.load_run(learned_run.path)
    images = cxrlab.load_data(run.config, splits=("test",)).splits["test"].images[:3].numpy()
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"x{i}.png")
        Image.fromarray(image).save(paths[-1])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    from_files = run.predict([*paths, tmp_path / "bad.png"])
    from_arrays = run.predict(images)
    assert [p.probability for p in from_files[:3]] == pytest.approx([p.probability for p in from_arrays], abs=1e-5)
    assert from_files[3].error and "bad.png" in from_files[3].error
    with pytest.raises(ValueError, match="uint8"):
        run.predict(np.zeros((2, 64, 64), np.float32))
    explained = run.explain(paths[:2], out=tmp_path / "cam")
    assert [e.overlay.is_file() for e in explained] == [True, True]


def test_importing_cxrlab_leaves_the_notebooks_matplotlib_backend_alone():
    code = "import matplotlib; matplotlib.use('svg'); import cxrlab, cxrlab.evaluation.plots, cxrlab.api; print(matplotlib.get_backend())"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "svg"


def test_tracking_logs_config_epochs_metrics_and_plots_to_mlflow(learned_run, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from cxrlab.training.tracking import log_run

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = log_run(learned_run.path, store)
    client = MlflowClient(tracking_uri=store)
    logged = client.get_run(run_id)
    assert logged.data.params["model"] == "efficientnet_b0" and logged.data.params["epochs"] == "4"
    assert logged.data.tags["cxrlab.data_kind"] == "phantom"
    test = json.loads(learned_run.metrics("test").read_text())
    assert logged.data.metrics["test/roc_auc"] == pytest.approx(test["roc_auc"])
    steps = client.get_metric_history(run_id, "val_roc_auc")
    assert [m.step for m in steps] == [1, 2, 3, 4]
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"config.yaml", "summary.json", "plots/curves.png"} <= artifacts
    assert (tmp_path / "mlartifacts").is_dir()  # beside the database, not in the working directory
