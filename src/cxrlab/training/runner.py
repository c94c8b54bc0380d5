"""Many independent runs (compare's models x seeds, cv's folds): reuse what is finished, resume what was
interrupted, train the rest, one after another or side by side in separate processes.

How many at once (``plan``): on a CPU one run per core, one thread each, and never more threads in total than
cores: side by side at one thread each finishes a study sooner than one run at a time with every thread, and runs
that each take every core slow each other down several-fold (measured: benchmarks/README.md). With CUDA, small images leave a GPU
mostly idle, so two runs share each visible
GPU at up to 64 px and one run per GPU above (not yet timed on a GPU: benchmarks/gpu_check.sh measures it).
A run's results do not depend on how many ran beside it (same seed, same threads: tests/test_studies.py).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cxrlab.config import SCORING_OPTIONS, Config
from cxrlab.console import logger, set_prefix
from cxrlab.core.runs import RunDir
from cxrlab.errors import ConfigError, RunDirError
from cxrlab.training.loop import resume_training, train
from cxrlab.training.progress import PlannedRun, clear_running, mark_running, write_status
from cxrlab.training.shared import Shared, join, release, require_all, work

log = logger(__name__)

LOCATIONS = ("out", "data_root", "download", "device")  # where a run is, not what it is: may differ between machines
GPU_SHARE_MAX_SIZE = 64  # image size up to which two runs share one GPU
STATUS_EVERY_S = 30  # how often the parent refreshes OUT/status.json while workers train
STUDY_LINE_EVERY_S = 600  # and prints the study's progress line, besides whenever a run ends


def available_cores() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """CUDA device ids to hand out to workers (as CUDA_VISIBLE_DEVICES entries)."""
    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in listed.split(",") if d.strip()] if listed else []
    return ids[: torch.cuda.device_count()] or [str(i) for i in range(torch.cuda.device_count())]


@dataclass(frozen=True)
class Plan:
    workers: int  # runs at once; 0 when nothing is left to train
    threads: int | None  # torch threads per run; None: torch's own choice
    gpus: tuple[str, ...] = ()  # CUDA_VISIBLE_DEVICES entry per worker slot, handed out in turn; empty: no pinning

    def describe(self) -> str:
        each = f", {self.threads} thread{'s' * (self.threads != 1)} each" if self.threads else ""
        on = f" on GPU {', '.join(sorted(set(self.gpus)))}" if self.gpus else ""
        return f"{self.workers} at a time{each}{on}"


def plan(
    pending: int,
    device: str,
    size: int,
    workers: int | None = None,
    threads: int | None = None,
    cores: int | None = None,
    gpus: list[str] | None = None,
) -> Plan:
    """How many of ``pending`` runs to train at once and with how many threads each: the measured rule for what
    was not given, a clear error for what cannot pay (more threads in total than cores)."""
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    cores = cores or available_cores()
    if workers and threads and workers * threads > cores:
        raise ConfigError(
            f"{workers} workers x {threads} threads = {workers * threads} threads on {cores} cores: runs that share cores "
            f"slow each other down several-fold; use at most {cores // threads or 1} workers with {threads} threads, "
            f"or leave --workers out for the measured default"
        )
    if workers and not threads and workers > cores:
        raise ConfigError(
            f"{workers} workers on {cores} cores: at most one run per core pays (each run at one thread); "
            f"use --workers {cores} or fewer, or leave it out for the measured default"
        )
    if pending == 0:
        return Plan(0, threads)
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    gpus = (visible_gpus() if gpus is None else gpus) if use_cuda and device in ("auto", "cuda") else []
    if workers is None:
        if use_cuda:
            per_gpu = 2 if size <= GPU_SHARE_MAX_SIZE else 1
            workers = max(1, len(gpus) or 1) * per_gpu
        elif device == "mps":
            workers = 1
        else:
            workers = max(1, cores // (threads or 1))
    workers = min(workers, pending)
    if threads is None and workers > 1:
        threads = max(1, cores // workers)
    slots = tuple(gpus[i % len(gpus)] for i in range(workers)) if gpus and workers > 1 else ()
    return Plan(workers, threads, slots)


def what_it_is(cfg: Config) -> dict:
    """The options that make a run what it is: not the scoring options, not its locations."""
    return {k: v for k, v in cfg.to_dict().items() if k not in SCORING_OPTIONS and k not in LOCATIONS}


def differing_options(asked: Config, saved: Config) -> list[str]:
    """The training options in which a run on disk differs from the one asked for. Scoring options and locations
    (another machine's mount of the same folder and file; the data file is checked by its MD5) do not count, and
    precision 'auto' matches whatever the run resolved it to on its device (a run saves what it chose)."""
    existing = saved.to_dict()
    return sorted(k for k, v in what_it_is(asked).items() if existing.get(k) != v and not (k == "precision" and v == "auto"))


def run_state(cfg: Config) -> str:
    """'new', 'finished' or 'partial' for cfg's run directory; an error when it holds a run of another config."""
    run = RunDir(cfg.out)
    if not run.config.exists():
        return "new"
    changed = differing_options(cfg, run.load_config())
    if changed:
        raise RunDirError(f"{run.path} holds a run with a different config ({', '.join(changed)}); choose another --out")
    return "finished" if run.summary.is_file() else "partial"


def run_model(cfg: Config, progress: bool | None, side_by_side: int = 1, on_epoch=None) -> RunDir:
    """Train cfg's run, reuse it when already finished with the same training config, or resume it when interrupted.
    While it trains, its folder holds worker.json (this process), so a status check can tell running from interrupted."""
    state = run_state(cfg)
    if state == "finished":
        log.info(f"reusing finished run {cfg.out}")
        return RunDir(cfg.out)
    mark_running(cfg.out)
    try:
        if state == "partial":
            return resume_training(cfg.out, progress=progress, side_by_side=side_by_side, on_epoch=on_epoch, data_root=cfg.data_root)
        return train(cfg, progress=progress, side_by_side=side_by_side, on_epoch=on_epoch)
    finally:
        clear_running(cfg.out)


class StudyStatus:
    """Keeps OUT/status.json current and prints the study's progress line (runs, epochs, time left)."""

    def __init__(self, folder: str | Path | None, configs: dict):
        self.folder = folder
        self.runs = [
            PlannedRun(tag_of(cfg), str(RunDir(cfg.out).path), cfg.model, cfg.total_epochs, cfg.early_stopping, cfg.select_metric)
            for cfg in configs.values()
        ]
        self.workers, self.printed = 1, 0.0

    def update(self, say: bool = False) -> None:
        if self.folder is None:
            return
        progress = write_status(self.folder, self.runs, self.workers)
        if say or time.monotonic() - self.printed >= STUDY_LINE_EVERY_S:
            self.printed = time.monotonic()
            log.info("[study] " + "\n[study] ".join(progress.lines()[:2]))


def run_all(
    configs: dict,
    progress: bool | None,
    workers: int | None = None,
    threads: int | None = None,
    status_dir: str | Path | None = None,
    shared: Shared | None = None,
    identity: dict | None = None,
) -> dict:
    """Every config's run (keys are the caller's; ``config.out`` the run folder), in the callers' order. Finished runs
    are reused here; the rest are trained by ``plan``: in this process when one at a time, else in spawned worker
    processes that print one prefixed line per epoch and run. A run that fails is named after the others finish;
    Ctrl-C stops every worker, and each interrupted run resumes from its last epoch on the next call.
    ``status_dir``: where the study's status.json is kept (``cxrlab status`` reads it). ``shared``: the runs are a
    shared study's (training/shared.py), trained by workers on any number of machines; ``identity`` (the data
    file's MD5) joins the runs' options in the study's fingerprint."""
    states = {key: run_state(cfg) for key, cfg in configs.items()}  # every config mismatch is found before any training
    runs = {key: RunDir(cfg.out) for key, cfg in configs.items() if states[key] == "finished"}
    for key in runs:
        log.info(f"reusing finished run {configs[key].out}")
    pending = [key for key in configs if key not in runs]
    first = configs[pending[0]] if pending else next(iter(configs.values()), None)
    how = plan(len(pending), first.device if first else "cpu", first.size if first else 28, workers, threads)
    status = StudyStatus(status_dir, configs)
    status.workers = max(how.workers, 1)
    status.update(say=bool(pending))
    if shared is not None:
        _shared_study(configs, runs, how, status, shared, identity or {}, status_dir)
    elif how.workers == 1:
        for key in pending:
            cfg = replace(configs[key], threads=how.threads or configs[key].threads)
            log.info(f"\n=== {tag_of(cfg)} ===")
            runs[key] = run_model(cfg, progress, on_epoch=lambda epoch, row: status.update())
            status.update(say=True)
    elif pending:
        log.info(f"training {len(pending)} runs, {how.describe()}")
        runs.update(_side_by_side({key: replace(configs[key], threads=how.threads) for key in pending}, how, status))
    return {key: runs[key] for key in configs}


def fingerprint(configs: dict, identity: dict) -> dict:
    """What a shared study is: ``identity`` (the data file's MD5) and every run's training options."""
    return {**identity, "runs": {tag_of(cfg): what_it_is(cfg) for cfg in configs.values()}}


def _shared_study(configs: dict, runs: dict, how: Plan, status: StudyStatus, shared: Shared, identity: dict, folder) -> None:
    """Join (or create) the shared study, work on it with ``how.workers`` processes here until it is done, then
    fill ``runs`` with every run (or name those that failed)."""
    by_tag = {tag_of(cfg): replace(cfg, threads=how.threads or cfg.threads) for cfg in configs.values()}
    study = join(shared, list(by_tag), fingerprint(configs, identity), Path(folder or RunDir(next(iter(configs.values())).out).path.parent))
    log.info(f"working on shared study {shared.name!r} ({shared.where}) with {how.workers} worker(s) here, {how.describe()}")
    if how.workers == 1:
        failed = work(shared, lambda key, _trial: _train_key(by_tag[key], how.workers, status))
    else:
        failed = _shared_workers(by_tag, how, shared, status)
    status.update(say=True)
    require_all(study, list(by_tag), shared)
    if failed:
        log.info("failed here, then finished by another worker: " + "; ".join(failed))
    runs.update({key: RunDir(cfg.out) for key, cfg in configs.items()})


def _train_key(cfg: Config, side_by_side: int, status: StudyStatus | None = None) -> float:
    run = run_model(cfg, progress=False, side_by_side=side_by_side, on_epoch=(lambda epoch, row: status.update()) if status else None)
    return float(run.read_json(run.summary)["best_val_score"])


def _shared_workers(by_tag: dict, how: Plan, shared: Shared, status: StudyStatus) -> list[str]:
    context = multiprocessing.get_context("spawn")
    slots = context.Queue()
    for gpu in how.gpus:
        slots.put(gpu)
    pool = ProcessPoolExecutor(how.workers, mp_context=context, initializer=_start_worker, initargs=(slots, bool(how.gpus)))
    try:
        futures = [pool.submit(_shared_worker, by_tag, how.workers, shared) for _ in range(how.workers)]
        waiting = set(futures)
        while waiting:
            ended, waiting = wait(waiting, timeout=STATUS_EVERY_S, return_when=FIRST_COMPLETED)
            status.update(say=bool(ended))
    except KeyboardInterrupt:
        stop_workers(pool)
        released = release(shared)
        log.info(f"\ninterrupted: back in study {shared.name!r}'s queue for any worker to resume: {', '.join(released) or 'none'}")
        raise
    pool.shutdown()
    return [error for future in futures for error in future.result()]


def _shared_worker(by_tag: dict, side_by_side: int, shared: Shared) -> list[str]:
    def run_key(key: str, _trial: int) -> float:
        set_prefix(f"[{key}] ")
        return _train_key(by_tag[key], side_by_side)

    return work(shared, run_key)


def tag_of(cfg: Config) -> str:
    """The run's folder name (model-seedK, foldK): what its lines are prefixed with."""
    return RunDir(cfg.out).path.name


def _side_by_side(configs: dict, how: Plan, status: StudyStatus) -> dict:
    context = multiprocessing.get_context("spawn")  # fork would copy this process's torch threads and locks
    slots = context.Queue()
    for gpu in how.gpus:
        slots.put(gpu)
    pool = ProcessPoolExecutor(how.workers, mp_context=context, initializer=_start_worker, initargs=(slots, bool(how.gpus)))
    runs, failed = {}, []
    try:
        futures = {pool.submit(_worker_run, cfg, how.workers): key for key, cfg in configs.items()}
        waiting = set(futures)
        while waiting:
            ended, waiting = wait(waiting, timeout=STATUS_EVERY_S, return_when=FIRST_COMPLETED)
            for future in ended:
                key = futures[future]
                try:
                    runs[key] = RunDir(future.result())
                except Exception as exc:
                    failed.append(f"{tag_of(configs[key])}: {type(exc).__name__}: {exc}")
            status.update(say=bool(ended))
    except KeyboardInterrupt:
        stop_workers(pool)
        log.info(f"\ninterrupted: stopped {how.workers} worker(s); the same command resumes every unfinished run")
        raise
    pool.shutdown()
    if failed:
        raise RunDirError("these runs failed (the others finished and are reused next time):\n  " + "\n  ".join(failed))
    return runs


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """After Ctrl-C: workers ignore SIGINT so that this process decides; stop them all now. Each keeps its last
    epoch's checkpoint (written atomically), so its run resumes."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(timeout=10)
    pool.shutdown(wait=False, cancel_futures=True)


def _start_worker(slots, pin_gpu: bool) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if pin_gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = slots.get()  # before this process first touches CUDA


def _worker_run(cfg: Config, side_by_side: int) -> str:
    set_prefix(f"[{tag_of(cfg)}] ")  # this worker's lines name its run
    return str(run_model(cfg, progress=False, side_by_side=side_by_side).path)
