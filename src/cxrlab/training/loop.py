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
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from cxrlab.config import Config, improved, resolve, score_of
from cxrlab.console import logger, quiet
from cxrlab.core.checkpoint import TrainingState, load_state, save_state, save_weights
from cxrlab.core.device import grad_scaler, resolve_precision, setup_device
from cxrlab.core.runs import RunDir
from cxrlab.data.augment import AugmentSettings
from cxrlab.data.datafile import SPLITS, locate
from cxrlab.data.task import TaskData, fold_view, task_data
from cxrlab.errors import ConfigError, RunDirError, TrainingDiverged
from cxrlab.evaluation.evaluate import finalize_run
from cxrlab.files import atomic_write_json, atomic_write_text
from cxrlab.models.registry import count_parameters, model_from_config, set_trainable
from cxrlab.training.distributed import (
    Process,
    backend_name,
    barrier,
    from_main,
    init_process,
    main_first,
    process_device,
    shutdown,
    sync_buffers,
)
from cxrlab.training.epoch import EpochInputs, Learner, place_training_images, train_one_epoch, validation_row
from cxrlab.training.tracking import log_run, tracking_uri

log = logger(__name__)

HISTORY_FIELDS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_balanced_accuracy",
    "val_roc_auc",
    "lr",
    "seconds",
)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Config):
    """ReduceLROnPlateau on val loss (the experiment's), or MultiStepLR (MedMNIST v2's recipe: x0.1 at epochs 50 and 75 of 100)."""
    if cfg.lr_schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.lr_milestones), gamma=cfg.lr_gamma)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience)


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


def train(
    cfg: Config,
    resume: bool = False,
    progress: bool | None = None,
    on_epoch: EpochCallback | None = None,
    side_by_side: int = 1,
    search_trial: bool = False,
) -> RunDir:
    """Train one model; return its finished run directory. ``resume`` continues ``cfg.out`` from its last checkpoint.
    ``on_epoch(epoch, row)`` is called after every epoch (hyperparameter search prunes trials by raising there).
    ``side_by_side``: how many runs shared the machine (recorded with the timings, so s/epoch is not misread).
    ``search_trial``: a hyperparameter-search trial, which chooses on val: test is never loaded, and the run ends
    with its val metrics (no out-of-distribution check, no figures but the curves). ``cfg.sealed`` (a study's runs)
    never loads test either, and the run ends with everything its evidence gives; a lone run scores test too.

    Started by torchrun, every process runs this function and trains its shard (see training/distributed.py).
    """
    process = init_process(cfg.device)
    try:
        with quiet(not process.is_main):  # one process speaks for all
            return _train(cfg, resume, progress, process, on_epoch, side_by_side, search_trial)
    finally:
        shutdown(process)


def _train(
    cfg: Config,
    resume: bool,
    progress: bool | None,
    process: Process,
    on_epoch: EpochCallback | None,
    side_by_side: int,
    search_trial: bool,
) -> RunDir:
    cfg, run = open_run(cfg, resume, process)
    device = setup_device(process_device(cfg.device, process), cfg.threads)
    cfg.precision = resolve_precision(cfg.precision, device)  # 'auto' saved as what it chose
    data = training_data(cfg, run, resume, process, splits=("train", "val") if cfg.sealed or search_trial else SPLITS)
    has_checkpoint = from_main(process, resume and run.last_checkpoint.is_file())
    learner = new_learner(cfg, device, initial_weights=not has_checkpoint)  # a checkpoint replaces the initial weights anyway
    if has_checkpoint:
        state = restore(run, learner, process)
        log.info(f"resuming {run.path} after epoch {state.epoch}")
    else:
        state = TrainingState()
        if process.is_main:
            start_run_directory(run, cfg, data, resume)
    state.world_size = process.world_size
    if process.distributed:
        learner.net = DistributedDataParallel(learner.model)
    say_start(cfg, data, learner.model, device, process)
    inputs = epoch_inputs(cfg, data, device)

    started = time.perf_counter()
    while not state.done and state.epoch < cfg.total_epochs:
        row, is_best = run_epoch(learner, inputs, state, cfg, data, device, process, progress, run)
        if process.is_main:
            save_epoch(run, learner, state, is_best)
        log.info(epoch_line(row, cfg.total_epochs, is_best))
        if on_epoch:
            on_epoch(row["epoch"], row)

    if state.best_epoch is None:
        raise TrainingDiverged(f"no epoch gave a usable val {cfg.select_metric}; nothing to evaluate")
    if process.is_main:
        finalize_run(run, cfg, data, device, state, side_by_side=side_by_side, search_trial=search_trial)
        log.info(f"run directory: {run.path}  (wall {time.perf_counter() - started:.0f}s this session)")
        if cfg.track:
            log.info(f"logged to MLflow ({tracking_uri(cfg.tracking_uri)}): run {log_run(run.path, cfg.tracking_uri)}")
    barrier(process)
    return run


def open_run(cfg: Config, resume: bool, process: Process) -> tuple[Config, RunDir]:
    """The resolved config and its run directory, refused when a new run would overwrite one; the data file located
    (downloaded when asked) by one process while the others wait."""
    if not resume:
        cfg = from_main(process, resolve(cfg))  # one run directory name, even if the clocks of ranks differ
    run = RunDir(cfg.out)

    def check_new_run_and_data():
        if not resume and run.config.exists():
            raise RunDirError(f"{run.path} already holds a run; resume it with --resume {run.path} or choose another --out")
        locate(cfg.data_root, cfg.size, download=cfg.download, dataset=cfg.dataset)

    main_first(process, check_new_run_and_data)
    return cfg, run


def training_data(cfg: Config, run: RunDir, resume: bool, process: Process, splits=SPLITS) -> TaskData:
    """The task's splits (a cross-validation fold's view when asked), refused when a resumed run's file changed or a
    class is missing from train or val."""
    data = task_data(cfg, splits=splits)
    if cfg.cv_folds:
        data = fold_view(data, cfg.cv_folds, cfg.cv_fold)
    if cfg.finetune and process.distributed:
        raise ConfigError(
            "progressive fine-tuning (finetune) freezes parameters, which DistributedDataParallel does not allow; train it in one process"
        )
    if resume and process.is_main:
        run.check_data(data.provenance, then="; cannot resume it")
    if data.task == "binary" and (min(data.splits["train"].counts()) == 0 or min(data.splits["val"].counts()) == 0):
        raise ConfigError(f"classes {data.classes}: a class has no images in train or val ({_counts_text(data)})")
    return data


def new_learner(cfg: Config, device: torch.device, initial_weights: bool) -> Learner:
    torch.manual_seed(cfg.seed)
    model = model_from_config(cfg, initial_weights=initial_weights).to(device, memory_format=memory_format(cfg))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return Learner(model, optimizer, make_scheduler(optimizer, cfg), grad_scaler(cfg, device))


def memory_format(cfg: Config) -> torch.memory_format:
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def restore(run: RunDir, learner: Learner, process: Process) -> TrainingState:
    """An interrupted run's weights, optimizer, schedule, scaler and state, read by rank 0 and sent to the others."""
    saved = from_main(process, load_state(run.last_checkpoint) if process.is_main else None)
    learner.load(saved)
    return TrainingState.from_dict(saved)


def start_run_directory(run: RunDir, cfg: Config, data: TaskData, resume: bool) -> None:
    if resume:  # killed before its first epoch ended: nothing to carry over
        log.info(f"{run.path} has no finished epoch; starting it from the beginning")
    run.path.mkdir(parents=True, exist_ok=True)
    cfg.save(run.config)
    atomic_write_json(run.data, {**data.provenance, "classes": data.classes, "counts": _counts(data)})


def say_start(cfg: Config, data: TaskData, model: torch.nn.Module, device, process: Process) -> None:
    where = f"{process.world_size} processes ({backend_name()})" if process.distributed else f"device {device}"
    log.info(f"{cfg.model}: {count_parameters(model):,} parameters, lr {cfg.lr:g}, {where}, data: {data.label}")
    train, val = data.splits["train"], data.splits["val"]
    if data.task == "binary":
        log.info(f"  train {train.counts()}  val {val.counts()}  ({data.classes[0]}, {data.classes[1]})")
    else:
        log.info(f"  multilabel, 14 labels: train {len(train):,} images, val {len(val):,}")


def epoch_inputs(cfg: Config, data: TaskData, device: torch.device) -> EpochInputs:
    train = data.splits["train"]
    images, where_images = place_training_images(train.images, device)
    if where_images:
        log.info(where_images)
    return EpochInputs(
        images=images,
        targets=train.targets.to(device).float().view(len(train), -1),
        augmentation=AugmentSettings.from_config(cfg),
        pos_weight=pos_weight_tensor(cfg, data, device),
        memory_format=memory_format(cfg),
    )


def run_epoch(
    learner: Learner,
    inputs: EpochInputs,
    state: TrainingState,
    cfg: Config,
    data: TaskData,
    device,
    process: Process,
    progress: bool | None,
    run: RunDir,
) -> tuple[dict, bool]:
    """Train one epoch, validate, step the schedule and record the epoch's decisions. Returns (row, is the best)."""
    epoch = state.epoch
    stage, part, stage_lr, stage_starts = stage_at(cfg.stages, epoch)
    if cfg.finetune:
        set_trainable(learner.model, cfg.model, part)
        if stage_starts:  # a new stage: its own learning rate, a fresh plateau schedule and patience
            for group in learner.optimizer.param_groups:
                group["lr"] = stage_lr
            learner.scheduler = make_scheduler(learner.optimizer, cfg)  # plateau: finetune refuses multistep
            state.bad_epochs = 0
            log.info(f"fine-tuning stage {stage + 1}/{len(cfg.stages)}: train {part}, lr {stage_lr:g}, {cfg.stages[stage][1]} epochs")
    t0 = time.perf_counter()
    row = {"epoch": epoch + 1}
    row.update(train_one_epoch(learner, inputs, cfg, epoch, device, process, progress, run.last_checkpoint))
    # DDP sends rank 0's BatchNorm statistics before each forward, so after the last step the ranks' differ: rank 0's
    # go to all, rank 0 validates, and every decision below (schedule, best epoch, early stop) uses its row.
    sync_buffers(process, learner.model)
    row.update(from_main(process, validation_row(learner.model, data, cfg, device) if process.is_main else None))
    row["lr"] = learner.optimizer.param_groups[0]["lr"]
    row["seconds"] = time.perf_counter() - t0
    if cfg.lr_schedule == "plateau":
        learner.scheduler.step(row["val_loss"])
    else:
        learner.scheduler.step()
    is_best = record_epoch(state, row, cfg, last_stage=stage == len(cfg.stages) - 1)
    if state.done:
        log.info(f"early stop: no val {cfg.select_metric} improvement for {cfg.early_stopping} epochs")
    return row, is_best


def save_epoch(run: RunDir, learner: Learner, state: TrainingState, is_best: bool) -> None:
    if is_best:
        save_weights(learner.model, run.weights)
    save_state({**state.as_dict(), **learner.state_dicts()}, run.last_checkpoint)
    write_history(run.history, state.history)


def epoch_line(row: dict, total_epochs: int, is_best: bool) -> str:
    return (
        f"epoch {row['epoch']:3d}/{total_epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}  "
        f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f} auc {row['val_roc_auc']:.3f}  "
        f"lr {row['lr']:.2g}  {row['seconds']:.1f}s" + (" *" if is_best else "")
    )


def _counts(data: TaskData) -> dict:
    return {split: dict(zip(data.classes, s.counts())) for split, s in data.splits.items()}


def _counts_text(data: TaskData) -> str:
    return "; ".join(f"{split}: {c}" for split, c in _counts(data).items())


def resume_training(
    run_path,
    progress: bool | None = None,
    side_by_side: int = 1,
    on_epoch: EpochCallback | None = None,
    data_root: str | None = None,
    search_trial: bool = False,
) -> RunDir:
    """Continue the run in ``run_path`` from its last checkpoint; ``data_root``: where this machine has the data file
    (default: the run's own), for a run started on another machine of a shared study; ``search_trial``: a search
    trial's run, which never loads test (see ``train``)."""
    run = RunDir(run_path)
    cfg = run.load_config()
    cfg.out = str(run.path.resolve())
    if data_root:
        cfg.data_root = data_root
    return train(cfg, resume=True, progress=progress, on_epoch=on_epoch, side_by_side=side_by_side, search_trial=search_trial)
