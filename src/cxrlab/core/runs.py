"""A run directory: everything one training run produced, enough to evaluate or predict later.

    config.yaml         resolved config (every option)
    data.json           data provenance: file, MD5, real/phantom, per-split class counts
    history.csv         one row per epoch
    checkpoints/last.pt resumable training state (written every epoch)
    model.safetensors   best weights (by the val metric)
    summary.json        best epoch, decision threshold, classes, parameter count, timings
    operating_point.json the single threshold and the refer band, and the evidence they were chosen on
    metrics.json        test metrics (the reported numbers); metrics_val.json for val
    plots/*.png         curves, confusion matrix, ROC, prediction grid
"""

from __future__ import annotations

import json
from pathlib import Path

from cxrlab.config import Config, load_config
from cxrlab.errors import RunDirError


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    config = property(lambda self: self.path / "config.yaml")
    data = property(lambda self: self.path / "data.json")
    history = property(lambda self: self.path / "history.csv")
    last_checkpoint = property(lambda self: self.path / "checkpoints" / "last.pt")
    weights = property(lambda self: self.path / "model.safetensors")
    summary = property(lambda self: self.path / "summary.json")
    operating_point = property(lambda self: self.path / "operating_point.json")
    plots = property(lambda self: self.path / "plots")

    def metrics(self, split: str) -> Path:
        return self.path / ("metrics.json" if split == "test" else f"metrics_{split}.json")

    def load_config(self) -> Config:
        if not self.config.is_file():
            raise RunDirError(f"{self.path} is not a cxrlab run directory (no config.yaml)")
        return load_config(self.config)

    def read_json(self, path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise RunDirError(f"{path.name} is missing from {self.path}; was the run completed?") from None
        except json.JSONDecodeError as exc:
            raise RunDirError(f"{path} is damaged ({exc})") from None

    def require_finished(self) -> dict:
        """The run's summary; a clear error when training did not finish."""
        if not self.path.is_dir():
            raise RunDirError(f"run directory not found: {self.path}")
        self.load_config()
        if not self.summary.is_file() or not self.weights.is_file():
            hint = f" Resume it with: cxrlab train --resume {self.path}" if self.last_checkpoint.is_file() else ""
            raise RunDirError(f"{self.path} has no finished training (summary.json or model.safetensors missing).{hint}")
        return self.read_json(self.summary)
