"""torchrun with 2 CPU processes (gloo) on phantom data: learns, writes the same run directory, resumes."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from cxrlab.training.loop import train

FLAGS = ["--model", "efficientnet_b0", "--epochs", "4", "--lr", "1e-3", "--batch-size", "32", "--n-bootstrap", "50", "--device", "cpu",
         "--select-metric", "roc_auc",  # as conftest's learned_run: 4 phantom epochs, the recipe the learning tests share
         "--aug-rotation", "0", "--aug-translate", "0", "--aug-hflip", "0", "--aug-brightness", "0", "--aug-contrast", "0", "--no-aug-blur",
         "--no-progress"]


def torchrun(*args, record=None, **kwargs):
    """Two processes of `cxrlab train`; with ``record`` (a path prefix) each rank also writes what its decisions read."""
    program = [str(Path(__file__).parent / "ddp_ranks.py"), str(record)] if record else ["-m", "cxrlab"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *program, "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True, **kwargs)


def history(path):
    with open(path / "history.csv") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def files(path):
    return {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def ddp_run(phantom_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    proc = torchrun("--data-root", str(phantom_root), "--out", str(out), *FLAGS, record=out.parent / "record")
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    return out, output


def test_two_processes_learn_and_write_one_run(ddp_run, quick_config, tmp_path):
    out, output = ddp_run
    assert "2 processes (gloo)" in output
    assert output.count("epoch   1/4") == 1, "only rank 0 reports"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert json.loads((out / "metrics_val.json").read_text())["roc_auc"] > 0.8
    single = train(replace(quick_config, epochs=1, out=str(tmp_path / "single")), progress=False, echo=lambda _: None)
    assert files(out) == files(single.path)  # also no stray temporary files from other ranks


def test_every_rank_reads_the_same_buffers_val_row_and_learning_rate_each_epoch(ddp_run):
    out, _ = ddp_run
    ranks = [json.loads((out.parent / f"record.rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(history(out)), "every rank ran the same epochs and stopped together"
    for epoch0, epoch1 in zip(*ranks):
        assert epoch0 == epoch1  # BatchNorm buffers, val loss / accuracy / AUC, lr: identical, not merely close
    assert ranks[0][0]["buffers"] != ranks[0][-1]["buffers"], "the buffers recorded are the ones training moves"


def test_a_killed_two_process_run_resumes_to_the_same_end(ddp_run, phantom_root, tmp_path):
    whole, _ = ddp_run
    out = tmp_path / "killed"
    proc = torchrun("--data-root", str(phantom_root), "--out", str(out), *FLAGS)
    deadline = time.time() + 200
    while not ((out / "history.csv").exists() and len(history(out)) >= 1):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists()
    resumed = torchrun("--resume", str(out))
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert "resuming" in output
    assert history(out) == history(whole)
    assert json.loads((out / "metrics.json").read_text()) == json.loads((whole / "metrics.json").read_text())
