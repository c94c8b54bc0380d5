"""Running a model over images: large batches, no autograd, probabilities out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cxrlab.config import Config
from cxrlab.data.augment import eval_batch
from cxrlab.models import model_from_config
from cxrlab.runs import RunDir
from cxrlab.training.checkpoint import load_weights
from cxrlab.training.device import autocast, setup_device


def predict_logits(model: nn.Module, images: torch.Tensor, cfg: Config, device: torch.device) -> torch.Tensor:
    """uint8 (N, S, S) -> float logits (N, outputs) on the CPU. Leaves the model in eval mode."""
    model.eval()
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    out = []
    with torch.inference_mode(), autocast(cfg, device):
        for start in range(0, len(images), cfg.eval_batch_size):
            x = eval_batch(images[start : start + cfg.eval_batch_size], cfg.norm_mean, cfg.norm_std, device)
            out.append(model(x.contiguous(memory_format=memory_format)).float().cpu())
    return torch.cat(out) if out else torch.empty(0, cfg.num_outputs)


def predict_probs(model: nn.Module, images: torch.Tensor, cfg: Config, device: torch.device) -> np.ndarray:
    return torch.sigmoid(predict_logits(model, images, cfg, device)).numpy()


@dataclass
class TrainedModel:
    """A finished run loaded for inference: its config, model, decision threshold and class names."""

    run: RunDir
    cfg: Config
    model: nn.Module
    device: torch.device
    threshold: float
    classes: list[str]
    is_phantom: bool
    temperature: float = 1.0  # fitted on val; binary task only

    def probs(self, images: torch.Tensor) -> np.ndarray:
        return predict_probs(self.model, images, self.cfg, self.device)


def load_trained(run_path, device: str | None = None) -> TrainedModel:
    run = RunDir(run_path)
    summary = run.require_finished()
    cfg = run.load_config()
    dev = setup_device(device or cfg.device, cfg.threads)
    model = model_from_config(cfg, initial_weights=False)
    load_weights(model, run.weights)
    model = model.to(dev, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format).eval()
    return TrainedModel(run, cfg, model, dev, float(summary["threshold"]), summary["classes"], summary["data_kind"] == "phantom",
                        float(summary.get("temperature", 1.0)))
