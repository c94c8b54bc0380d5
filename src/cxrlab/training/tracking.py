"""Optional MLflow tracking (``pip install cxrlab[tracking]``; off unless ``--track``): each finished run is
logged from its run directory, which stays the source of truth: the config as parameters, every epoch of
history.csv as step-wise metrics, the val and test metrics of the best checkpoint (``val/roc_auc``, ``test/...``), summary.json,
config.yaml and the plots as artifacts.
Phantom runs are tagged as such, like every other output.

The store: ``--tracking-uri`` (a server such as http://host:5000, or a database URL), else ``mlflow.db`` (SQLite)
in the working directory with the artifacts beside it in ``mlartifacts/`` (MLflow 3 refuses its old plain-folder
store). See them with: mlflow ui --backend-store-uri sqlite:///mlflow.db
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from cxrlab.core.runs import RunDir
from cxrlab.errors import ConfigError

DEFAULT_DATABASE = "mlflow.db"


def tracking_uri(uri: str | None) -> str:
    return uri or f"sqlite:///{Path(DEFAULT_DATABASE).resolve()}"


def use_experiment(mlflow, name: str, uri: str) -> None:
    """Select (creating it if needed) the experiment; a local SQLite store keeps its artifacts in mlartifacts/ beside
    the database, not in the working directory of whoever logs first."""
    if mlflow.get_experiment_by_name(name) is None:
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
        mlflow.create_experiment(name, artifact_location=location)
    mlflow.set_experiment(name)


def experiment_name(dataset: str) -> str:
    return f"cxrlab-{dataset}"


def log_run(run_path, uri: str | None = None) -> str:
    """Log one finished run to MLflow; returns the MLflow run id."""
    try:
        import mlflow
    except ImportError:
        raise ConfigError("tracking needs MLflow: pip install 'cxrlab[tracking]' (or leave --track off)") from None
    run = RunDir(run_path)
    summary = run.require_finished()
    cfg = run.load_config()
    uri = tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    use_experiment(mlflow, experiment_name(cfg.dataset), uri)
    with open(run.history) as fh:
        history = list(csv.DictReader(fh))
    with mlflow.start_run(run_name=run.path.name) as active:
        mlflow.set_tags(
            {
                "cxrlab.run_dir": str(run.path.resolve()),
                "cxrlab.data_kind": summary["data_kind"],
                "cxrlab.data_label": summary["data_label"],
                "cxrlab.data_md5": summary["data_md5"],
                "cxrlab.model": cfg.model,
            }
        )
        mlflow.log_params({k: json.dumps(v) if isinstance(v, list) else v for k, v in cfg.to_dict().items()})
        for row in history:
            step = int(row["epoch"])
            mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "epoch" and v not in ("", None)}, step=step)
        splits = [split for split in ("val", "test") if run.metrics(split).is_file()]  # a sealed run has no test metrics
        for split in splits:
            metrics = json.loads(run.metrics(split).read_text())
            # split/metric: the best checkpoint at the val-chosen threshold, apart from the per-epoch history's val_* curves
            mlflow.log_metrics({f"{split}/{k}": float(v) for k, v in metrics.items() if _is_number(v)})
        mlflow.log_metrics(
            {"best_epoch": summary["best_epoch"], "threshold": summary["threshold"], "train_seconds": summary["train_seconds"]}
        )
        for path in (run.config, run.summary, *(run.metrics(split) for split in splits)):
            mlflow.log_artifact(str(path))
        if run.plots.is_dir():
            mlflow.log_artifacts(str(run.plots), artifact_path="plots")
        return active.info.run_id


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
