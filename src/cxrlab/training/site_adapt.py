"""Adapting a trained model to a site, each a choice the site makes and its site.json names, never on by default:

- label-free: BatchNorm statistics re-estimated on the site's images (Schneider et al., NeurIPS 2020; it can fail
  under a change of prevalence, Vianna et al. 2024);
- with labels: the whole model fine-tuned on part of the site's labelled images, each batch mixed with as many of
  the run's own training images against forgetting, augmented as the run was trained.

Both return an adapted copy; the model given is left as it is.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrlab.config import Config
from cxrlab.data.augment import AugmentSettings, eval_batch, training_batch


def adapt_batchnorm(model: nn.Module, images: np.ndarray, cfg: Config, device: torch.device) -> nn.Module:
    """A copy whose BatchNorm layers hold the mean and variance of the site's ``images`` (uint8 (N, S, S)), averaged
    over every batch; every other layer and weight unchanged."""
    adapted = copy.deepcopy(model).eval()
    norms = [m for m in adapted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the site's batches
        norm.train()
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    with torch.no_grad():
        for start in range(0, len(images), cfg.eval_batch_size):
            batch = torch.from_numpy(images[start : start + cfg.eval_batch_size])
            adapted(eval_batch(batch, cfg.norm_mean, cfg.norm_std, device).contiguous(memory_format=memory_format))
    return adapted.eval()


def fine_tune(
    model: nn.Module,
    cfg: Config,
    device: torch.device,
    site: tuple[np.ndarray, np.ndarray],
    training: tuple[np.ndarray, np.ndarray],
    epochs: int = 6,
    lr: float = 1e-4,
    seed: int = 0,
) -> nn.Module:
    """A copy trained for ``epochs`` with Adam at ``lr`` on the site's (images, class-1 targets) and, each epoch, as
    many images drawn from ``training`` (the run's own training set)."""
    tuned = copy.deepcopy(model).train()
    optimizer = torch.optim.Adam(tuned.parameters(), lr=lr)
    settings = AugmentSettings.from_config(cfg)
    gen, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    for _ in range(epochs):
        drawn = rng.choice(len(training[0]), min(len(site[0]), len(training[0])), replace=False)
        images = torch.from_numpy(np.concatenate([site[0], training[0][drawn]]))
        targets = torch.from_numpy(np.concatenate([site[1], training[1][drawn]]).astype(np.float32))
        order = torch.randperm(len(images), generator=gen)
        for start in range(0, len(images), cfg.batch_size):
            rows = order[start : start + cfg.batch_size]
            if len(rows) < 2:  # BatchNorm in training mode needs two images
                continue
            x = training_batch(images[rows], settings, gen, cfg.norm_mean, cfg.norm_std, device).contiguous(memory_format=memory_format)
            loss = F.binary_cross_entropy_with_logits(tuned(x)[:, 0], targets[rows].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return tuned.eval()
