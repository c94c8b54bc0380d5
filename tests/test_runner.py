"""Runs side by side: the worker rule, its bad input, and Ctrl-C stopping every worker with every run resumable."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cxrlab.core.runs import RunDir
from cxrlab.errors import ConfigError
from cxrlab.training.runner import Plan, available_cores, plan


def test_on_a_cpu_the_default_is_one_run_per_core_at_one_thread():
    assert plan(6, "cpu", 28, cores=2) == Plan(2, 1)
    assert plan(20, "cpu", 28, cores=16) == Plan(16, 1)
    assert plan(6, "cpu", 28, cores=16) == Plan(6, 2)  # fewer runs than cores: the spare cores go to the runs
    assert plan(1, "cpu", 28, cores=2) == Plan(1, None)  # one run left: it keeps every core
    assert plan(6, "cpu", 28, threads=2, cores=2) == Plan(1, 2)
    assert plan(6, "cpu", 28, threads=2, cores=8) == Plan(4, 2)
    assert plan(6, "cpu", 28, workers=2, cores=8) == Plan(2, 4)  # workers given: the cores split between them
    assert plan(0, "cpu", 28, cores=2).workers == 0  # everything reused: nothing to start


def test_with_cuda_small_models_share_a_gpu_and_workers_take_gpus_in_turn():
    assert plan(9, "cuda", 28, cores=16, gpus=["0", "1"]) == Plan(4, 4, ("0", "1", "0", "1"))
    assert plan(9, "cuda", 224, cores=16, gpus=["0", "1"]) == Plan(2, 8, ("0", "1"))
    assert plan(3, "cuda", 28, cores=16, gpus=["5"]) == Plan(2, 8, ("5", "5"))
    assert plan(3, "cuda:1", 28, cores=16, gpus=["0", "1"]) == Plan(2, 8)  # a named GPU: every run on it, no pinning


@pytest.mark.parametrize(
    ("workers", "threads", "message"),
    [
        (0, None, "workers must be at least 1, got 0"),
        (2, 0, "threads must be at least 1, got 0"),
        (2, 2, "2 workers x 2 threads = 4 threads on 2 cores"),
        (3, None, "3 workers on 2 cores"),
    ],
)
def test_bad_worker_counts_are_refused_with_the_numbers(workers, threads, message):
    with pytest.raises(ConfigError, match=message):
        plan(6, "cpu", 28, workers=workers, threads=threads, cores=2)


def live_processes_in_group(pgid: int) -> list[str]:
    """Processes of the group that still run (zombies that this container's init never reaps do not count)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(stat.parent.name)
    return live


@pytest.mark.skipif(available_cores() < 2, reason="two workers at one thread need two cores")
def test_ctrl_c_stops_every_worker_and_the_same_command_resumes_the_runs(tmp_path):
    """Cross-validation with two folds side by side: Ctrl-C (SIGINT to the whole process group, as a terminal sends it)
    after the first epoch stops the command and both workers at once; running the command again resumes both folds."""
    from cxrlab.data.phantom import write_phantom

    write_phantom(tmp_path / "data", size=28, seed=2, split_sizes={"train": 400, "val": 100, "test": 100})  # folds of 100 images
    out = tmp_path / "cv"
    cmd = [
        sys.executable,
        "-m",
        "cxrlab",
        "cv",
        "--data-root",
        str(tmp_path / "data"),
        "--model",
        "mobilenet_v3_large",
        "--folds",
        "2",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--n-bootstrap",
        "20",
        "--device",
        "cpu",
        "--workers",
        "2",
        "--threads",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not any((out / f"fold{k}" / "history.csv").is_file() for k in (0, 1)):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no epoch finished in 300 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("compare did not stop within 60 s of Ctrl-C")
    assert proc.returncode == 130, output
    assert "interrupted: stopped 2 worker(s)" in output
    time.sleep(1)
    assert live_processes_in_group(proc.pid) == [], "a worker outlived the command"
    assert not any(RunDir(out / f"fold{k}").summary.exists() for k in (0, 1))

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming" in again.stdout and "after epoch" in again.stdout
    for k in (0, 1):
        with open(out / f"fold{k}" / "history.csv") as fh:
            assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2]
        summary = json.loads(RunDir(out / f"fold{k}").summary.read_text())
        assert (summary["side_by_side"], summary["threads"]) == (2, 1)  # recorded with the timings
    assert (out / "cv.md").is_file()


def _fake_run(folder, epochs_done, seconds, best_at, patience=3, max_epochs=10, finished=False):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"epochs": max_epochs, "early_stopping": patience, "select_metric": "loss"}))
    rows = ["epoch,val_loss,seconds"] + [f"{e + 1},{1.0 if e + 1 != best_at else 0.1},{seconds}" for e in range(epochs_done)]
    (folder / "history.csv").write_text("\n".join(rows) + "\n")
    if finished:
        (folder / "summary.json").write_text("{}")


def test_study_progress_tells_running_from_interrupted_and_bounds_the_time_left(tmp_path):
    from cxrlab.training.progress import PlannedRun, clear_running, mark_running, read_status, write_status

    _fake_run(tmp_path / "a", 10, 5.0, best_at=4, finished=True)
    _fake_run(tmp_path / "b", 4, 20.0, best_at=3)  # 1 epoch since best: 2 to 6 epochs left
    _fake_run(tmp_path / "c", 2, 40.0, best_at=2)  # killed: no live process holds it
    (tmp_path / "c" / "worker.json").write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))
    runs = [PlannedRun(name, str(tmp_path / name), "m1" if name != "c" else "m2", 10, 3, "loss") for name in "abcd"]  # d: not started
    mark_running(tmp_path / "b")
    write_status(tmp_path, runs, workers=2)
    progress = read_status(tmp_path)
    assert [r.state for r in progress.runs] == ["finished", "running", "interrupted", "waiting"]
    # b: 2..6 epochs x 20 s; c: 3..8 x 40 s; d: 4..10 epochs at m1's measured speed (b's 20 s, a's 5 s: median 12.5 s)
    low, high = progress.seconds_left()
    assert low == pytest.approx((2 * 20 + 3 * 40 + 4 * 12.5) / 2) and high == pytest.approx((6 * 20 + 8 * 40 + 10 * 12.5) / 2)
    assert progress.lines()[0] == "1/4 runs finished, 1 running, 2 left (1 interrupted); 16 epochs done"
    clear_running(tmp_path / "b")
    assert read_status(tmp_path).runs[1].state == "interrupted"


def test_a_run_asked_with_precision_auto_is_reused_whatever_it_resolved_to_and_another_option_is_refused(tmp_path):
    from cxrlab.config import Config, resolve
    from cxrlab.errors import RunDirError
    from cxrlab.training.runner import run_state

    asked = resolve(Config(precision="auto", out=str(tmp_path / "run")))
    run = RunDir(asked.out)
    run.path.mkdir()
    Config(**{**asked.to_dict(), "precision": "bf16"}).save(run.config)  # what training on a bf16-native GPU saves
    assert run_state(asked) == "partial"
    with pytest.raises(RunDirError, match=r"different config \(lr, precision\)"):
        run_state(Config(**{**asked.to_dict(), "precision": "fp16", "lr": 0.5}))
