"""The GPU path, on a GPU: device choice, bf16 autocast with channels_last, two runs sharing one GPU, and torchrun
with nccl. Skipped without CUDA (benchmarks/gpu_check.sh runs them on a CUDA machine)."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from cxrlab.core.device import setup_device
from cxrlab.training.loop import train
from cxrlab.training.runner import plan, run_all

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_auto_picks_the_gpu():
    assert setup_device("auto").type == "cuda"


@pytest.mark.parametrize("model", ["mobilenet_v3_large", "densenet121", "efficientnet_b0", "resnet18"])
def test_bf16_channels_last_training_learns_on_the_gpu(quick_config, model):
    cfg = replace(quick_config, model=model, device="auto", precision="bf16", channels_last=True, epochs=3, lr=1e-3)
    run = train(cfg, progress=False)
    summary = json.loads(run.summary.read_text())
    assert summary["device"].startswith("cuda")
    assert json.loads(run.metrics("val").read_text())["roc_auc"] > 0.75


def test_two_runs_share_one_gpu_and_match_one_after_another(quick_config, tmp_path):
    assert plan(2, "cuda", 28, gpus=["0"]).workers == 2  # small images: two runs per GPU by default
    configs = {seed: replace(quick_config, device="cuda", seed=seed, out=str(tmp_path / "side" / f"seed{seed}")) for seed in (0, 1)}
    side = run_all(configs, progress=False)
    for seed, run in side.items():
        assert json.loads(run.summary.read_text())["side_by_side"] == 2
        alone = train(replace(configs[seed], out=str(tmp_path / "alone" / f"seed{seed}")), progress=False)
        a, b = (json.loads(r.metrics("val").read_text())["roc_auc"] for r in (run, alone))
        assert a == pytest.approx(b, abs=0.05)  # cuDNN picks kernels per process: close, not bitwise


def test_torchrun_on_the_gpus(phantom_root, tmp_path):
    """One process per GPU, up to two; with two, DistributedDataParallel over nccl (one GPU: torchrun's single process)."""
    nproc = min(2, torch.cuda.device_count())
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "cxrlab",
        "train",
        "--data-root",
        str(phantom_root),
        "--device",
        "cuda",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--n-bootstrap",
        "50",
        "--no-progress",
        "--out",
        str(tmp_path / "ddp"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["world_size"] == nproc
    if nproc == 2:
        assert "2 processes (nccl)" in done.stdout


def test_auto_precision_matches_the_gpu_and_an_fp16_run_resumes_with_its_scaler(quick_config, tmp_path):
    from cxrlab.core.checkpoint import load_state
    from cxrlab.core.device import native_bf16
    from cxrlab.core.runs import RunDir

    cfg = replace(quick_config, device="cuda", precision="auto", epochs=1, out=str(tmp_path / "auto"))
    run = train(cfg, progress=False)
    assert RunDir(run.path).load_config().precision == ("bf16" if native_bf16(torch.device("cuda")) else "fp16")
    fp16 = train(replace(cfg, precision="fp16", epochs=2, out=str(tmp_path / "fp16")), progress=False)
    assert load_state(RunDir(fp16.path).last_checkpoint)["scaler"]["scale"] > 0
    assert json.loads(fp16.metrics("val").read_text())["roc_auc"] > 0.6


def test_training_images_that_do_not_fit_stay_in_pinned_host_memory_and_the_run_still_learns(quick_config, monkeypatch, capsys):
    import cxrlab.training.epoch as epoch

    monkeypatch.setattr(epoch, "DEVICE_DATA_SHARE", 0.0)  # nothing fits: the host path
    run = train(replace(quick_config, device="cuda", epochs=3, lr=1e-3), progress=False)
    assert "pinned host memory" in capsys.readouterr().out
    assert json.loads(run.metrics("val").read_text())["roc_auc"] > 0.75
