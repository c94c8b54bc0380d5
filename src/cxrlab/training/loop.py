"""Training, top to bottom: data, model, optimiser, then epochs of train / validate / checkpoint, then the
final evaluation of the best checkpoint. Protocol: train on train, select on val, report on test.

Determinism: every epoch reseeds torch from (seed, epoch), so a resumed run replays exactly the epochs an
uninterrupted run would have had; ``checkpoints/last.pt`` holds everything else that carries over.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from sklearn.metrics import balanced_accuracy_score
from tqdm.auto import tqdm  # a widget in a notebook, text in a terminal

from cxrlab.config import Config, improved, resolve, score_of
from cxrlab.data.augment import AugmentSettings, training_batch
from cxrlab.data.datafile import locate
from cxrlab.data.task import TaskData, data_label, fold_view, task_data
from cxrlab.errors import ConfigError, RunDirError, TrainingDiverged
from cxrlab.evaluation.evaluate import finalize_run
from cxrlab.evaluation.inference import predict_logits
from cxrlab.evaluation.metrics import mean_auc
from cxrlab.files import atomic_write_json, atomic_write_text
from cxrlab.models.registry import count_parameters, freeze_frozen_norms, model_from_config, set_trainable
from cxrlab.core.runs import RunDir
from cxrlab.core.checkpoint import TrainingState, load_state, save_state, save_weights
from cxrlab.core.device import autocast, grad_scaler, resolve_precision, setup_device
from cxrlab.training.distributed import (
    Process,
    backend_name,
    first_batch_not_finite,
    barrier,
    from_main,
    init_process,
    main_first,
    process_device,
    shutdown,
    sum_across,
    sync_buffers,
)
from cxrlab.training.tracking import log_run, tracking_uri

HISTORY_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_roc_auc", "lr", "seconds")


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Config):
    """ReduceLROnPlateau on val loss (the experiment's), or MultiStepLR (MedMNIST v2's recipe: x0.1 at epochs 50 and 75 of 100)."""
    if cfg.lr_schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.lr_milestones), gamma=cfg.lr_gamma)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def pos_weight_tensor(cfg: Config, data: TaskData, device) -> torch.Tensor | None:
    """BCE pos_weight: one value (binary) or one per label (multilabel); 'auto' is negatives / positives in train."""
    if cfg.pos_weight == "none":
        return None
    train = data.splits["train"]
    if cfg.pos_weight != "auto":
        values = [float(cfg.pos_weight)] * cfg.num_outputs
    elif data.task == "binary":
        negatives, positives = train.counts()
        values = [negatives / max(positives, 1)]
    else:
        values = [(len(train) - p) / max(p, 1) for p in train.counts()]
    return torch.tensor(values, device=device)


def write_history(path: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


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


EpochCallback = Callable[[int, dict], None]


def record_epoch(state: TrainingState, row: dict, cfg: Config, last_stage: bool) -> bool:
    """Add a finished epoch's row to the state and take the decisions it drives: a new best epoch, patience, early
    stop (only in the last fine-tuning stage). Returns whether the epoch is the best so far."""
    score = score_of(row, cfg.select_metric)
    is_best = improved(score, state.best_score, cfg.select_metric)
    if is_best:
        state.best_score, state.best_epoch, state.bad_epochs = score, row["epoch"], 0
    else:
        state.bad_epochs += 1
    state.history.append(row)
    state.epoch = row["epoch"]
    state.done = bool(cfg.early_stopping) and state.bad_epochs >= cfg.early_stopping and last_stage
    return is_best


def stage_at(stages: list[tuple[str, int, float]], epoch: int) -> tuple[int, str, float, bool]:
    """(stage index, part, lr, whether ``epoch`` is the stage's first) for a 0-based epoch."""
    start = 0
    for index, (part, epochs, lr) in enumerate(stages):
        if epoch < start + epochs:
            return index, part, lr, epoch == start
        start += epochs
    raise ValueError(f"epoch {epoch} is past the last stage")


def train(cfg: Config, resume: bool = False, progress: bool | None = None, echo: Callable[[str], None] = print,
          on_epoch: EpochCallback | None = None, side_by_side: int = 1) -> RunDir:
    """Train one model; return its finished run directory. ``resume`` continues ``cfg.out`` from its last checkpoint.
    ``on_epoch(epoch, row)`` is called after every epoch (hyperparameter search prunes trials by raising there).
    ``side_by_side``: how many runs shared the machine (recorded with the timings, so s/epoch is not misread).

    Started by torchrun, every process runs this function and trains its shard (see training/distributed.py).
    """
    process = init_process(cfg.device)
    try:
        return _train(cfg, resume, progress, echo if process.is_main else _silent, process, on_epoch, side_by_side)
    finally:
        shutdown(process)


def _silent(_: str) -> None:
    pass


def _train(cfg: Config, resume: bool, progress: bool | None, echo: Callable[[str], None], process: Process, on_epoch: EpochCallback | None,
           side_by_side: int) -> RunDir:
    if not resume:
        cfg = from_main(process, resolve(cfg))  # one run directory name, even if the clocks of ranks differ
    run = RunDir(cfg.out)

    def check_new_run_and_data():
        if not resume and run.config.exists():
            raise RunDirError(f"{run.path} already holds a run; resume it with --resume {run.path} or choose another --out")
        locate(cfg.data_root, cfg.size, download=cfg.download, dataset=cfg.dataset)  # one process downloads; the others wait for it

    main_first(process, check_new_run_and_data)

    # ---- data and model ----
    device = setup_device(process_device(cfg.device, process), cfg.threads)
    cfg.precision = resolve_precision(cfg.precision, device)  # 'auto' saved as what it chose
    data = task_data(cfg)
    if cfg.cv_folds:
        data = fold_view(data, cfg.cv_folds, cfg.cv_fold)
    if cfg.finetune and process.distributed:
        raise ConfigError("progressive fine-tuning (finetune) freezes parameters, which DistributedDataParallel does not allow; train it in one process")
    has_checkpoint = from_main(process, resume and run.last_checkpoint.is_file())
    if resume and process.is_main and run.data.is_file():
        recorded = run.read_json(run.data)
        if recorded["md5"] != data.provenance["md5"]:
            raise RunDirError(f"the data file {data.provenance['file']} changed since {run.path} started (MD5 differs); cannot resume")
    train_split = data.splits["train"]
    if data.task == "binary" and (min(train_split.counts()) == 0 or min(data.splits["val"].counts()) == 0):
        raise ConfigError(f"classes {data.classes}: a class has no images in train or val ({_counts_text(data)})")
    torch.manual_seed(cfg.seed)
    model = model_from_config(cfg, initial_weights=not has_checkpoint)  # a checkpoint replaces them anyway
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg)
    scaler = grad_scaler(cfg, device)

    # ---- run directory: new, or the state of an interrupted run (read by rank 0, sent to the others) ----
    state = TrainingState()
    if has_checkpoint:
        saved = from_main(process, load_state(run.last_checkpoint) if process.is_main else None)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if "scaler" in saved:  # checkpoints written before fp16 training existed have none
            scaler.load_state_dict(saved["scaler"])
        state = TrainingState.from_dict(saved)
        echo(f"resuming {run.path} after epoch {state.epoch}")
    elif process.is_main:
        if resume:  # killed before its first epoch ended: nothing to carry over
            echo(f"{run.path} has no finished epoch; starting it from the beginning")
        run.path.mkdir(parents=True, exist_ok=True)
        cfg.save(run.config)
        atomic_write_json(run.data, {**data.provenance, "classes": data.classes, "counts": _counts(data)})
    state.world_size = process.world_size
    net = DistributedDataParallel(model) if process.distributed else model  # model stays the unwrapped one
    label = data_label(data.provenance)
    n_params = count_parameters(model)
    where = f"{process.world_size} processes ({backend_name()})" if process.distributed else f"device {device}"
    echo(f"{cfg.model}: {n_params:,} parameters, lr {cfg.lr:g}, {where}, data: {label}")
    if data.task == "binary":
        echo(f"  train {train_split.counts()}  val {data.splits['val'].counts()}  ({data.classes[0]}, {data.classes[1]})")
    else:
        echo(f"  multilabel, 14 labels: train {len(train_split):,} images, val {len(data.splits['val']):,}")

    # ---- epochs ----
    images, where_images = place_training_images(train_split.images, device)
    if where_images:
        echo(where_images)
    epoch_inputs = EpochInputs(
        images=images,
        targets=train_split.targets.to(device).float().view(len(train_split), -1),
        augmentation=AugmentSettings.from_config(cfg),
        pos_weight=pos_weight_tensor(cfg, data, device),
        memory_format=memory_format,
    )
    stages = cfg.stages
    started = time.perf_counter()
    while not state.done and state.epoch < cfg.total_epochs:
        epoch = state.epoch
        stage, part, stage_lr, stage_starts = stage_at(stages, epoch)
        if cfg.finetune:
            set_trainable(model, cfg.model, part)
            if stage_starts:  # a new stage: its own learning rate, a fresh plateau schedule and patience
                for group in optimizer.param_groups:
                    group["lr"] = stage_lr
                scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience)
                state.bad_epochs = 0
                echo(f"fine-tuning stage {stage + 1}/{len(stages)}: train {part}, lr {stage_lr:g}, {stages[stage][1]} epochs")
        t0 = time.perf_counter()
        row = {"epoch": epoch + 1}
        row.update(train_one_epoch(net, optimizer, epoch_inputs, cfg, epoch, device, process, progress, run, scaler))
        # DDP sends rank 0's BatchNorm statistics before each forward, so after the last step the ranks' differ: rank 0's
        # go to all, rank 0 validates, and every decision below (schedule, best epoch, early stop) uses its row.
        sync_buffers(process, model)
        row.update(from_main(process, validation_row(model, data, cfg, device) if process.is_main else None))
        row["lr"] = optimizer.param_groups[0]["lr"]
        row["seconds"] = time.perf_counter() - t0
        if cfg.lr_schedule == "plateau":
            scheduler.step(row["val_loss"])
        else:
            scheduler.step()
        is_best = record_epoch(state, row, cfg, last_stage=stage == len(stages) - 1)
        if state.done:
            echo(f"early stop: no val {cfg.select_metric} improvement for {cfg.early_stopping} epochs")
        if process.is_main:
            if is_best:
                save_weights(model, run.weights)
            save_state({**state.as_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict()}, run.last_checkpoint)
            write_history(run.history, state.history)
        mark = " *" if is_best else ""
        echo(
            f"epoch {epoch + 1:3d}/{cfg.total_epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}  "
            f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f} auc {row['val_roc_auc']:.3f}  "
            f"lr {row['lr']:.2g}  {row['seconds']:.1f}s{mark}"
        )
        if on_epoch:
            on_epoch(epoch + 1, row)

    if state.best_epoch is None:
        raise TrainingDiverged(f"no epoch gave a usable val {cfg.select_metric}; nothing to evaluate")
    if process.is_main:
        finalize_run(run, cfg, data, device, state, side_by_side=side_by_side, echo=echo)
        echo(f"run directory: {run.path}  (wall {time.perf_counter() - started:.0f}s this session)")
        if cfg.track:
            echo(f"logged to MLflow ({tracking_uri(cfg.tracking_uri)}): run {log_run(run.path, cfg.tracking_uri)}")
    barrier(process)
    return run


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
    return images.pin_memory(), (f"training images in pinned host memory, copied per batch: {size_gb:.2f} GB is over "
                                 f"{DEVICE_DATA_SHARE:.0%} of the {free_gb:.1f} GB free on {device}")


@dataclass
class EpochInputs:
    images: torch.Tensor  # uint8 (N, S, S) on the training device, or in pinned host memory when it does not fit there
    targets: torch.Tensor  # float (N, outputs)
    augmentation: AugmentSettings
    pos_weight: torch.Tensor | None
    memory_format: torch.memory_format


def regularised_batch(x: torch.Tensor, y: torch.Tensor, mix: torch.distributions.Beta | None, smoothing: float,
                      gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
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


def train_one_epoch(net, optimizer, inputs: EpochInputs, cfg: Config, epoch: int, device, process: Process, progress: bool | None, run: RunDir,
                    scaler: torch.amp.GradScaler | None = None) -> dict:
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
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
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
                    f"The last good checkpoint (after epoch {epoch}) is kept in {run.last_checkpoint}. Try a lower --lr."
                )
            if not disable:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.3f}")
    bar.close()
    loss_total, correct_total, seen = sum_across(process, [loss_sum.item(), correct.item(), seen], device)
    return {"train_loss": loss_total / seen, "train_accuracy": correct_total / seen}


def _counts(data: TaskData) -> dict:
    return {split: dict(zip(data.classes, s.counts())) for split, s in data.splits.items()}


def _counts_text(data: TaskData) -> str:
    return "; ".join(f"{split}: {c}" for split, c in _counts(data).items())


def resume_training(run_path, progress: bool | None = None, echo: Callable[[str], None] = print, side_by_side: int = 1,
                    on_epoch: EpochCallback | None = None) -> RunDir:
    run = RunDir(run_path)
    cfg = run.load_config()
    cfg.out = str(run.path.resolve())
    return train(cfg, resume=True, progress=progress, echo=echo, on_epoch=on_epoch, side_by_side=side_by_side)

