"""A run directory: everything one training run produced, enough to evaluate or predict later. Its files are
named in one table, ``cxrlab.layout.RUN_FILES``."""

from __future__ import annotations

import json
from pathlib import Path

from cxrlab.config import Config, load_config
from cxrlab.errors import RunDirError
from cxrlab.layout import RUN_FILES


def _file(key: str) -> property:
    return property(lambda self: self.path / RUN_FILES[key])


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    config = _file("config")
    data = _file("data")
    history = _file("history")
    last_checkpoint = _file("last_checkpoint")
    weights = _file("weights")
    summary = _file("summary")
    operating_point = _file("operating_point")
    plots = _file("plots")
    ood_arrays = _file("ood_arrays")
    ood_report = _file("ood_report")
    onnx = _file("onnx")
    int8_onnx = _file("int8_onnx")
    export_report = _file("export_report")
    quantization_report = _file("quantization_report")
    bench_report = _file("bench_report")
    worker = _file("worker")

    def metrics(self, split: str) -> Path:
        return self.path / (RUN_FILES["test_metrics"] if split == "test" else f"metrics_{split}.json")

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

    def data_differs(self, provenance: dict) -> bool:
        """The run recorded a data file (data.json) whose MD5 is not ``provenance``'s."""
        return self.data.is_file() and self.read_json(self.data).get("md5") != provenance["md5"]

    def check_data(self, provenance: dict, then: str = "") -> None:
        """Refuse a data file other than the one this run was trained on (by MD5), naming both."""
        if self.data_differs(provenance):
            raise RunDirError(
                f"the data file {provenance['file']} (MD5 {provenance['md5']}) is not the one {self.path} was trained on "
                f"(MD5 {self.read_json(self.data).get('md5')}){then}"
            )

    def require_finished(self) -> dict:
        """The run's summary; a clear error when training did not finish."""
        if not self.path.is_dir():
            raise RunDirError(f"run directory not found: {self.path}")
        self.load_config()
        if not self.summary.is_file() or not self.weights.is_file():
            hint = f" Resume it with: cxrlab train --resume {self.path}" if self.last_checkpoint.is_file() else ""
            raise RunDirError(f"{self.path} has no finished training (summary.json or model.safetensors missing).{hint}")
        return self.read_json(self.summary)
