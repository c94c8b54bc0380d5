"""torchrun with 2 CPU processes (gloo) on phantom data: learns, writes the same run directory, resumes."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FLAGS = [
    "--model",
    "efficientnet_b0",
    "--epochs",
    "4",
    "--lr",
    "1e-3",
    "--batch-size",
    "32",
    "--n-bootstrap",
    "50",
    "--device",
    "cpu",
    "--select-metric",
    "roc_auc",  # as conftest's learned_run: 4 phantom epochs, the recipe the learning tests share
    "--aug-rotation",
    "0",
    "--aug-translate",
    "0",
    "--aug-hflip",
    "0",
    "--aug-brightness",
    "0",
    "--aug-contrast",
    "0",
    "--no-aug-blur",
    "--no-progress",
]


def torchrun(*args, record=None, env=None, **kwargs):
    """Two processes of `cxrlab train`; with ``record`` (a path prefix) each rank also writes what its decisions read."""
    program = [str(Path(__file__).parent / "ddp_ranks.py"), str(record)] if record else ["-m", "cxrlab"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *program, "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True, **kwargs)


def history(path):
    with open(path / "history.csv") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def files(path):
    return {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def ddp_run(learning_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    proc = torchrun("--data-root", str(learning_root), "--out", str(out), *FLAGS, record=out.parent / "record")
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    return out, output


def test_two_processes_learn_and_write_one_run(ddp_run, one_epoch_run):
    out, output = ddp_run
    assert "2 processes (gloo)" in output
    assert output.count("epoch   1/4") == 1, "only rank 0 reports"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert json.loads((out / "metrics_val.json").read_text())["roc_auc"] > 0.8
    assert files(out) == files(one_epoch_run.path)  # the files of a one-process run; no stray temporary files from other ranks


def test_every_rank_reads_the_same_buffers_val_row_and_learning_rate_each_epoch(ddp_run):
    out, _ = ddp_run
    ranks = [json.loads((out.parent / f"record.rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(history(out)), "every rank ran the same epochs and stopped together"
    for epoch0, epoch1 in zip(*ranks):
        assert epoch0 == epoch1  # BatchNorm buffers, val loss / accuracy / AUC, lr: identical, not merely close
    assert ranks[0][0]["buffers"] != ranks[0][-1]["buffers"], "the buffers recorded are the ones training moves"


def test_a_two_process_run_resumed_after_an_epoch_ends_where_the_uninterrupted_run_ends(ddp_run, tmp_path):
    """The fixture's run folder as it stood after epoch 2 (copied by the recorder: config, data, two history rows, the
    best weights and the checkpoint, what a kill during epoch 3 leaves) resumed under torchrun: the same epochs to the
    last digit and the same metrics as the uninterrupted run (weights, optimizer, schedule and every rank's random
    state restored). A kill at any moment is the single-process kill -9 test's (tests/test_training.py)."""
    whole, _ = ddp_run
    out = tmp_path / "resumed"
    shutil.copytree(whole.parent / "record.after2", out)
    assert len(history(out)) == 2 and not (out / "summary.json").exists()
    resumed = torchrun("--resume", str(out))
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert f"resuming {out} after epoch 2" in output, output
    assert history(out) == history(whole)
    assert json.loads((out / "metrics.json").read_text()) == json.loads((whole / "metrics.json").read_text())


def test_a_run_that_stops_early_ends_on_every_rank_together(phantom_root, tmp_path):
    """Patience 1 and no epoch after the first improving: the decision, taken from rank 0's shared row, stops every
    rank after epoch 2; the command ends (no rank left waiting in a collective) and rank 0 finishes the run."""
    out = tmp_path / "early"
    proc = torchrun(
        "--data-root",
        str(phantom_root),
        "--out",
        str(out),
        "--epochs",
        "5",
        "--early-stopping",
        "1",
        "--batch-size",
        "64",
        "--n-bootstrap",
        "20",
        "--device",
        "cpu",
        "--no-progress",
        record=tmp_path / "record",
        env={"DDP_RANKS_FLAT_SCORE": "1"},
    )
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert output.count("early stop: no val") == 1, "rank 0 reports it"
    ranks = [json.loads((tmp_path / f"record.rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(history(out)) == 2
    assert json.loads((out / "summary.json").read_text())["early_stopped"] is True


TORCHRUN_ENV = {
    "WORLD_SIZE": "2",
    "LOCAL_WORLD_SIZE": "2",
    "RANK": "0",
    "LOCAL_RANK": "0",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29999",
}


def test_a_launch_without_torchruns_variables_is_refused_by_name_before_any_collective(monkeypatch):
    from cxrlab.errors import ConfigError
    from cxrlab.training.distributed import init_process

    for name, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MASTER_ADDR")
    monkeypatch.delenv("RANK")
    with pytest.raises(ConfigError, match="WORLD_SIZE is 2 but RANK, MASTER_ADDR are not set: start distributed training with torchrun"):
        init_process("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE='two' is not a whole number"):
        init_process("cpu")


def test_more_processes_than_visible_gpus_are_refused_with_the_count_to_use(monkeypatch):
    import torch

    from cxrlab.errors import ConfigError
    from cxrlab.training import distributed

    for name, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    joined = []
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *a, **k: joined.append(k))
    with pytest.raises(
        ConfigError,
        match=r"torchrun started 2 processes on this machine but 1 GPU\(s\) are visible \(CUDA_VISIBLE_DEVICES=0\): "
        r"use --nproc_per_node 1, or --device cpu",
    ):
        distributed.init_process("auto")
    assert not joined
