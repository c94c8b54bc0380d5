"""Where a study stands, read from its run folders: runs finished / running / left, epochs done, and the time left
estimated from each model's measured seconds per epoch. ``OUT/status.json`` lists the study's runs (written when
the study starts and refreshed while it trains), so a second shell reads the same picture: ``cxrlab status OUT``.

Reads only CSV and JSON files: no torch, so that a status check answers at once.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cxrlab.errors import RunDirError
from cxrlab.files import atomic_write_json

STATUS_FILE = "status.json"
WORKER_FILE = "worker.json"  # in a run folder while a process trains it: pid and host


@dataclass
class RunProgress:
    tag: str
    path: str
    model: str
    state: str  # finished, running, interrupted (stopped mid-run; the same command resumes it), waiting
    epochs_done: int
    max_epochs: int
    since_best: int  # epochs since the best one (early stopping counts these)
    patience: int  # early stopping patience (0: off)
    seconds_per_epoch: float | None  # median of this run's epochs

    def epochs_left(self) -> tuple[int, int]:
        """(fewest, most) epochs this run may still train: early stopping can end it after ``patience`` epochs
        without improvement, the epoch budget ends it at the latest."""
        if self.state == "finished":
            return 0, 0
        most = self.max_epochs - self.epochs_done
        if not self.patience:
            return most, most
        fewest = self.patience + 1 if self.epochs_done == 0 else self.patience - self.since_best
        return max(0, min(fewest, most)), most


def mark_running(run_path: str | Path) -> Path:
    """Record that this process trains the run (removed by ``clear_running`` when it ends)."""
    marker = Path(run_path) / WORKER_FILE
    marker.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    return marker


def clear_running(run_path: str | Path) -> None:
    (Path(run_path) / WORKER_FILE).unlink(missing_ok=True)


def _alive(marker: Path, history: Path, epoch_s: float) -> bool:
    """This machine's worker process still exists; another machine's (a shared study) cannot be asked, so its run
    counts as running while its history moved within three of its slowest epochs (ten minutes at least)."""
    try:
        info = json.loads(marker.read_text())
        if info.get("host") != socket.gethostname():
            latest = max(p.stat().st_mtime for p in (marker, history) if p.exists())
            return time.time() - latest < max(600.0, 3 * epoch_s)
        os.kill(int(info["pid"]), 0)
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study as the study plans it: enough to count its epochs before its folder exists."""

    tag: str
    path: str
    model: str
    max_epochs: int
    patience: int
    select_metric: str


def run_progress(planned: PlannedRun) -> RunProgress:
    folder = Path(planned.path)
    rows = []
    if (folder / "history.csv").is_file():
        with open(folder / "history.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
    finished = (folder / "summary.json").is_file()
    if finished:
        state = "finished"
    elif _alive(folder / WORKER_FILE, folder / "history.csv", max((float(r["seconds"]) for r in rows), default=0.0)):
        state = "running"
    else:
        state = "interrupted" if rows else "waiting"
    scores = [float(r[f"val_{planned.select_metric}"]) for r in rows]
    best = (min if planned.select_metric == "loss" else max)(range(len(scores)), key=lambda i: scores[i], default=None)
    seconds = [float(r["seconds"]) for r in rows]
    return RunProgress(
        planned.tag,
        str(folder),
        planned.model,
        state,
        len(rows),
        planned.max_epochs,
        0 if best is None else len(rows) - 1 - best,
        planned.patience,
        statistics.median(seconds) if seconds else None,
    )


@dataclass
class StudyProgress:
    runs: list[RunProgress]
    workers: int
    updated: str

    def counts(self) -> dict[str, int]:
        return {state: sum(r.state == state for r in self.runs) for state in ("finished", "running", "interrupted", "waiting")}

    def seconds_left(self) -> tuple[float, float] | None:
        """(fewest, most) seconds left with ``workers`` runs at a time; None while a model has no measured epoch."""
        per_model: dict[str, list[float]] = {}
        for r in self.runs:
            if r.seconds_per_epoch:
                per_model.setdefault(r.model, []).append(r.seconds_per_epoch)
        low = high = 0.0
        for r in self.runs:
            fewest, most = r.epochs_left()
            if not most:
                continue
            speed = r.seconds_per_epoch or (statistics.median(per_model[r.model]) if r.model in per_model else None)
            if speed is None:
                return None
            low, high = low + fewest * speed, high + most * speed
        return low / max(self.workers, 1), high / max(self.workers, 1)

    def lines(self) -> list[str]:
        counts = self.counts()
        done = sum(r.epochs_done for r in self.runs)
        head = (
            f"{counts['finished']}/{len(self.runs)} runs finished, {counts['running']} running, "
            f"{counts['interrupted'] + counts['waiting']} left ({counts['interrupted']} interrupted); {done} epochs done"
        )
        left = self.seconds_left()
        if left is None:
            timing = "time left: not yet known (a model has no finished epoch to measure)"
        elif left[1] == 0:
            timing = "training done"
        else:
            timing = (
                f"time left: {duration(left[0])} to {duration(left[1])} ({self.workers} at a time; the low end if every run "
                "stops early at its patience, the high end if none does; from the measured s/epoch)"
            )
        out = [head, timing]
        for r in self.runs:
            speed = f", {r.seconds_per_epoch:.0f} s/epoch" if r.seconds_per_epoch else ""
            best = f", {r.since_best} since best" if r.epochs_done and r.state != "finished" else ""
            out.append(f"  {r.tag:<28} {r.state:<12} epoch {r.epochs_done}/{r.max_epochs}{best}{speed}")
        return out

    def to_dict(self) -> dict:
        return {
            "updated": self.updated,
            "workers": self.workers,
            "counts": self.counts(),
            "seconds_left": self.seconds_left(),
            "runs": [asdict(r) for r in self.runs],
        }


def duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def study_progress(runs: list[PlannedRun], workers: int) -> StudyProgress:
    return StudyProgress([run_progress(r) for r in runs], workers, time.strftime("%Y-%m-%d %H:%M:%S"))


def write_status(folder: str | Path, runs: list[PlannedRun], workers: int) -> StudyProgress:
    progress = study_progress(runs, workers)
    atomic_write_json(Path(folder) / STATUS_FILE, {**progress.to_dict(), "planned": [asdict(r) for r in runs]})
    return progress


def read_status(folder: str | Path) -> StudyProgress:
    """The study's progress now, from the run list its status file holds and the run folders on disk."""
    path = Path(folder).expanduser() / STATUS_FILE
    try:
        saved = json.loads(path.read_text())
        runs = [PlannedRun(**r) for r in saved["planned"]]
    except FileNotFoundError:
        raise RunDirError(f"{path} not found: {folder} is not a compare or cv folder, or its study has not started") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise RunDirError(f"{path} is damaged ({exc}); the next run of the study's command rewrites it") from None
    return study_progress(runs, int(saved.get("workers", 1)))
