"""Checkpoints: written atomically, read without unpickling arbitrary objects.

- ``model.safetensors``: the best weights (safetensors holds tensors only).
- ``checkpoints/last.pt``: everything needed to resume (model, optimiser, scheduler, counters, history),
  read back with ``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from cxrlab.errors import RunDirError
from cxrlab.files import atomic_write_bytes


@dataclass
class TrainingState:
    """Where a run stands after its last finished epoch; saved in every checkpoint beside the weights."""

    epoch: int = 0  # epochs finished
    best_score: float | None = None  # the best val score by select_metric so far
    best_epoch: int | None = None
    bad_epochs: int = 0  # epochs since the best one
    history: list[dict] = field(default_factory=list)  # one row per epoch (HISTORY_FIELDS)
    done: bool = False  # stopped early
    world_size: int = 1

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> TrainingState:
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})

    @property
    def train_seconds(self) -> float:
        return sum(row["seconds"] for row in self.history)


def save_weights(model: nn.Module, path: Path) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, safetensors.torch.save(tensors))


def load_weights(model: nn.Module, path: Path) -> None:
    try:
        state = safetensors.torch.load_file(str(path))
    except FileNotFoundError:
        raise RunDirError(f"model weights not found: {path}") from None
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise RunDirError(f"model weights {path} are damaged or not a safetensors file ({exc})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RunDirError(f"weights in {path} do not fit the configured model: {str(exc).splitlines()[0]}") from None


def save_state(state: dict, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunDirError(f"no checkpoint to resume from: {path}") from None
    except Exception as exc:  # pickle/zip errors and weights_only refusals
        raise RunDirError(f"checkpoint {path} is damaged or unsafe to load ({type(exc).__name__}: {exc})") from None
