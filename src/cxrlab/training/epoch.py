"""One epoch: the training pass over the shuffled, augmented training set (sums kept on the device) and the
validation row every selection rule reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score
from tqdm.auto import tqdm  # a widget in a notebook, text in a terminal

from cxrlab.config import Config
from cxrlab.core.device import autocast
from cxrlab.data.augment import AugmentSettings, training_batch
from cxrlab.data.task import TaskData
from cxrlab.errors import TrainingDiverged
from cxrlab.evaluation.inference import predict_logits
from cxrlab.evaluation.metrics import mean_auc
from cxrlab.models.registry import freeze_frozen_norms
from cxrlab.training.distributed import Process, first_batch_not_finite, sum_across


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


DEVICE_DATA_SHARE = 0.5  # the training images stay on a GPU only while they take at most this share of its free memory


def place_training_images(images: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, str | None]:
    """The training images on the device when they fit beside the model, its optimizer state and eval batches;
    else in pinned host memory, copied per batch (the 14-label 224 px ChestMNIST is 3.9 GB of uint8). Returns them
    and a line saying where they went, for a GPU."""
    if device.type != "cuda":
        return images.to(device), None
    free, _ = torch.cuda.mem_get_info(device)
    size_gb, free_gb = images.numel() * images.element_size() / 1e9, free / 1e9
    if images.numel() * images.element_size() <= DEVICE_DATA_SHARE * free:
        return images.to(device), f"training images on {device}: {size_gb:.2f} GB of {free_gb:.1f} GB free"
    return images.pin_memory(), (
        f"training images in pinned host memory, copied per batch: {size_gb:.2f} GB is over "
        f"{DEVICE_DATA_SHARE:.0%} of the {free_gb:.1f} GB free on {device}"
    )


@dataclass
class EpochInputs:
    images: torch.Tensor  # uint8 (N, S, S) on the training device, or in pinned host memory when it does not fit there
    targets: torch.Tensor  # float (N, outputs)
    augmentation: AugmentSettings
    pos_weight: torch.Tensor | None
    memory_format: torch.memory_format


@dataclass
class Learner:
    """What training changes: the model, the module that takes the steps (the model, or its DistributedDataParallel
    wrapper), the optimizer, its learning-rate schedule and the gradient scaler (disabled unless fp16)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    net: torch.nn.Module | None = None  # None: the model itself

    def __post_init__(self):
        if self.net is None:
            self.net = self.model

    def state_dicts(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if "scaler" in saved:  # checkpoints written before fp16 training existed have none
            self.scaler.load_state_dict(saved["scaler"])


def regularised_batch(
    x: torch.Tensor, y: torch.Tensor, mix: torch.distributions.Beta | None, smoothing: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (each image and target blended with a shuffled partner, lambda ~ mix) then label smoothing
    (targets y(1-e) + e/2). The global torch seed set per epoch makes the lambda draws replay on resume."""
    if mix is not None:
        lam = float(mix.sample())
        partner = torch.randperm(len(y), generator=gen, device=y.device)
        x, y = lam * x + (1 - lam) * x[partner], lam * y + (1 - lam) * y[partner]
    if smoothing:
        y = y * (1 - smoothing) + smoothing / 2
    return x, y


CHECK_EVERY = 32  # steps between the one device-to-host read that checks the loss (and refreshes the progress bar)


def train_one_epoch(
    learner: Learner, inputs: EpochInputs, cfg: Config, epoch: int, device, process: Process, progress: bool | None, last_checkpoint: Path
) -> dict:
    """One pass over this process's shard of the shuffled training set; loss and accuracy summed over all processes.
    Sums stay on the device: the host reads them every CHECK_EVERY steps (a non-finite loss stops the run there,
    naming the batch it first appeared in) and once at the end, so a GPU is not stalled by a sync per step."""
    seed = epoch_seed(cfg.seed, epoch)
    torch.manual_seed(seed + process.rank)  # dropout
    gen = torch.Generator(device=device).manual_seed(seed)  # the same order on every process
    on_host = inputs.images.device != device  # then batches are gathered on the host and copied over
    if on_host:
        order = torch.randperm(len(inputs.targets), generator=torch.Generator().manual_seed(seed))
    else:
        order = torch.randperm(len(inputs.targets), generator=gen, device=device)
    if process.distributed:  # equal shards, so every process runs the same number of steps
        order = order[: len(order) - len(order) % process.world_size][process.rank :: process.world_size]
        gen = torch.Generator(device=device).manual_seed(seed + 7919 * process.rank)  # augmentation differs per shard
    if len(order) % cfg.batch_size == 1:  # a batch of one breaks BatchNorm in training mode
        order = order[:-1]
    net, optimizer, scaler = learner.net, learner.optimizer, learner.scaler
    net.train()
    freeze_frozen_norms(net)
    mix = torch.distributions.Beta(cfg.mixup, cfg.mixup) if cfg.mixup else None
    loss_sum, correct = torch.zeros((), device=device, dtype=torch.float64), torch.zeros((), device=device, dtype=torch.float64)
    first_bad = torch.full((), -1, device=device, dtype=torch.int64)  # the first batch whose loss was not finite
    seen = 0
    disable = not process.is_main or (None if progress is None else not progress)
    starts = range(0, len(order), cfg.batch_size)
    bar = tqdm(starts, desc=f"epoch {epoch + 1}/{cfg.total_epochs}", leave=False, disable=disable)
    for step, start in enumerate(bar):
        idx = order[start : start + cfg.batch_size]
        batch = inputs.images[idx]
        if on_host:
            batch, idx = batch.pin_memory().to(device, non_blocking=True), idx.to(device, non_blocking=True)
        x = training_batch(batch, inputs.augmentation, gen, cfg.norm_mean, cfg.norm_std, device)
        x, y = regularised_batch(x, inputs.targets[idx], mix, cfg.label_smoothing, gen)
        with autocast(cfg, device):
            logits = net(x.contiguous(memory_format=inputs.memory_format)).float()
        loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=inputs.pos_weight)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        detached = loss.detach()
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(detached), step, first_bad)
        loss_sum += detached.double() * len(idx)
        correct += ((logits.detach() > 0) == (y > 0.5)).double().mean(1).sum()
        seen += len(idx)
        if (step + 1) % CHECK_EVERY == 0 or step + 1 == len(starts):
            bad = first_batch_not_finite(process, first_bad)
            if bad is not None:
                raise TrainingDiverged(
                    f"loss became non-finite in epoch {epoch + 1}, batch {bad + 1}; training stopped. "
                    f"The last good checkpoint (after epoch {epoch}) is kept in {last_checkpoint}. Try a lower --lr."
                )
            if not disable:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.3f}")
    bar.close()
    loss_total, correct_total, seen = sum_across(process, [loss_sum.item(), correct.item(), seen], device)
    return {"train_loss": loss_total / seen, "train_accuracy": correct_total / seen}


def validation_row(model, data: TaskData, cfg: Config, device) -> dict:
    """Val loss, accuracy at 0.5 (for multilabel: over all labels, medmnist's ACC), balanced accuracy (binary
    only) and ROC-AUC (mean over labels): every metric ``select_metric`` can name."""
    val = data.splits["val"]
    logits = predict_logits(model, val.images, cfg, device)
    targets = val.targets.float().view(len(val), -1)
    probs = torch.sigmoid(logits).numpy()
    y = targets.numpy()
    return {
        "val_loss": F.binary_cross_entropy_with_logits(logits, targets).item(),
        "val_accuracy": float(((probs >= 0.5) == y).mean()),
        "val_balanced_accuracy": balanced_accuracy_score(y[:, 0], probs[:, 0] >= 0.5) if data.task == "binary" else float("nan"),
        "val_roc_auc": mean_auc(y, probs),
    }
