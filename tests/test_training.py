import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

from cxrlab.core.checkpoint import load_state
from cxrlab.core.runs import RunDir
from cxrlab.errors import RunDirError, TrainingDiverged
from cxrlab.evaluation.evaluate import evaluate_run
from cxrlab.training.loop import resume_training, train
from tests.conftest import BINARY

NO_AUG = {"aug_rotation": 0.0, "aug_translate": 0.0, "aug_hflip": 0.0, "aug_brightness": 0.0, "aug_contrast": 0.0, "aug_blur": False}


def history(run: RunDir) -> list[dict]:
    with open(run.history) as fh:
        return [{k: float(v) for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def test_a_short_run_really_learns(learned_run):
    run = learned_run  # EfficientNet-B0, 4 epochs on the small phantom (conftest), shared with the export and serve tests
    val = json.loads(run.metrics("val").read_text())
    test = json.loads(run.metrics("test").read_text())
    assert val["roc_auc"] > 0.8 and test["roc_auc"] > 0.8, (val["roc_auc"], test["roc_auc"])
    assert test["tp"] > 0 and test["tn"] > 0, "predictions are not all one class"
    rows = history(run)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    summary = json.loads(run.summary.read_text())
    assert summary["data_kind"] == "phantom" and "PHANTOM" in summary["data_label"]
    assert test["threshold"] == val["threshold"] == summary["threshold"]  # chosen on val, applied to test
    for name in ("curves.png", "confusion_test.png", "roc_test.png", "val_grid.png"):
        assert (run.plots / name).stat().st_size > 1000
    # a run directory alone is enough to evaluate later, and gives the same numbers
    again = evaluate_run(run.path, "test")
    assert again["roc_auc"] == pytest.approx(test["roc_auc"]) and again["accuracy"] == pytest.approx(test["accuracy"])


def test_kill_9_then_resume_ends_where_an_uninterrupted_run_ends(quick_config, tmp_path):
    cfg = replace(quick_config, epochs=3, threads=2, out=str(tmp_path / "whole"))
    whole = train(cfg, progress=False)

    killed = RunDir(tmp_path / "killed")
    cmd = [
        sys.executable,
        "-m",
        "cxrlab",
        "train",
        "--data-root",
        cfg.data_root,
        "--epochs",
        str(cfg.epochs),
        "--batch-size",
        str(cfg.batch_size),
        "--n-bootstrap",
        str(cfg.n_bootstrap),
        "--threads",
        "2",
        "--device",
        "cpu",
        "--out",
        str(killed.path),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (killed.history.exists() and len(history(killed)) >= 1):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not killed.summary.exists(), "the run must be killed before it finished"
    assert load_state(killed.last_checkpoint)["epoch"] < cfg.epochs, "the resume must train an epoch again"

    resumed = resume_training(killed.path, progress=False)
    assert history(resumed) == history(whole)
    assert json.loads(resumed.metrics("test").read_text()) == json.loads(whole.metrics("test").read_text())
    from safetensors.torch import load_file

    a, b = load_file(str(whole.weights)), load_file(str(resumed.weights))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(quick_config, monkeypatch):
    import torch.nn.functional as F

    real = F.binary_cross_entropy_with_logits
    calls = {"train": 0}
    batches_per_epoch = -(-BINARY["train"] // quick_config.batch_size)

    def poisoned(logits, target, **kwargs):
        if "pos_weight" in kwargs:  # the training step; validation calls it without pos_weight
            calls["train"] += 1
            if calls["train"] > batches_per_epoch + 2:
                return real(logits, target, **kwargs) * float("nan")
        return real(logits, target, **kwargs)

    monkeypatch.setattr(F, "binary_cross_entropy_with_logits", poisoned)
    cfg = replace(quick_config, epochs=3)
    with pytest.raises(TrainingDiverged, match="epoch 2, batch 3") as err:
        train(cfg, progress=False)
    assert "after epoch 1" in str(err.value)
    run = RunDir(cfg.out)
    assert load_state(run.last_checkpoint)["epoch"] == 1
    assert len(history(run)) == 1 and run.weights.exists()


def test_an_existing_run_is_never_overwritten(one_epoch_run):
    run = one_epoch_run
    before = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    with pytest.raises(RunDirError, match="already holds a run"):
        train(run.load_config(), progress=False)
    assert before == {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}


def test_a_damaged_checkpoint_is_refused_by_name(one_epoch_run, tmp_path):
    run = RunDir(shutil.copytree(one_epoch_run.path, tmp_path / "run"))
    run.last_checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(RunDirError, match="last.pt"):
        resume_training(run.path, progress=False)
    run.weights.write_bytes(b"\x00" * 10)
    with pytest.raises(RunDirError, match="model.safetensors"):
        evaluate_run(run.path)


def test_resume_before_the_first_epoch_finished_starts_over(one_epoch_run, tmp_path):
    whole = one_epoch_run
    early = RunDir(tmp_path / "early")
    early.path.mkdir()
    # what a kill during the first epoch leaves: the config, no checkpoint
    early.config.write_text(whole.config.read_text().replace(str(whole.path), str(early.path)))
    resumed = resume_training(early.path, progress=False)
    assert history(resumed) == history(whole)


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_validation_reports_every_metric_that_can_select_the_best_epoch(quick_config, task):
    from cxrlab.config import SELECT_METRICS, score_of
    from cxrlab.data.task import load_task
    from cxrlab.models.registry import model_from_config
    from cxrlab.training.epoch import validation_row

    cfg = replace(quick_config, task=task)
    data = load_task(cfg.data_root, 28, cfg.classes, task=task, splits=("val",))
    row = validation_row(model_from_config(cfg), data, cfg, torch.device("cpu"))
    for metric in SELECT_METRICS:
        if task == "binary" or metric != "balanced_accuracy":
            assert isinstance(score_of(row, metric), float), metric


def test_bf16_autocast_computes_in_bf16_and_trains_with_finite_losses(tmp_path):
    """On a CPU without AVX512-BF16 (this project's machines) bf16 runs emulated and several times slower than fp32,
    so here one short epoch checks the plumbing; that bf16 training learns is asserted on a GPU (tests/test_cuda.py)."""
    from cxrlab.config import Config
    from cxrlab.core.device import autocast
    from cxrlab.data.phantom import write_phantom
    from cxrlab.models.registry import model_from_config

    write_phantom(tmp_path / "data", size=28, seed=1, split_sizes={"train": 240, "val": 120, "test": 120})
    cfg = Config(
        data_root=str(tmp_path / "data"),
        epochs=1,
        batch_size=32,
        n_bootstrap=20,
        device="cpu",
        precision="bf16",
        out=str(tmp_path / "run"),
        **NO_AUG,
    )
    run = train(cfg, progress=False)
    assert all(torch.isfinite(torch.tensor([r["train_loss"], r["val_loss"]])).all() for r in history(run))
    assert run.load_config().precision == "bf16"
    model = model_from_config(cfg).eval()
    with torch.no_grad(), autocast(cfg, torch.device("cpu")):
        assert model(torch.randn(2, 1, 28, 28)).dtype == torch.bfloat16


def test_label_smoothing_and_mixup_still_learn(quick_config, learning_root):
    # On the larger phantom: on SMALL's, val ROC-AUC was 0.85-0.94 for seeds 0-2 but 0.74 on a phantom drawn with seed 1
    cfg = replace(
        quick_config,
        data_root=str(learning_root),
        model="efficientnet_b0",
        epochs=3,
        lr=1e-3,
        label_smoothing=0.1,
        mixup=0.4,
        select_metric="roc_auc",
        **NO_AUG,
    )
    run = train(cfg, progress=False)
    rows = history(run)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert json.loads(run.metrics("val").read_text())["roc_auc"] > 0.7


def test_progressive_fine_tuning_trains_head_then_last_blocks_then_all(quick_config, tmp_path):
    import torchvision

    weights = tmp_path / "imagenet.pth"
    torch.manual_seed(0)
    imagenet = torchvision.models.efficientnet_b0().state_dict()
    torch.save(imagenet, weights)
    cfg = replace(
        quick_config,
        model="efficientnet_b0",
        pretrained=True,
        weights_file=str(weights),
        finetune="head:1:1e-3,last:1:5e-4,all:1:2e-4",
        select_metric="loss",
        **NO_AUG,
    )
    states = []
    run = train(cfg, progress=False, on_epoch=lambda epoch, row: states.append(load_state(RunDir(cfg.out).last_checkpoint)["model"]))
    assert [r["lr"] for r in history(run)] == [1e-3, 5e-4, 2e-4]  # each stage starts at its own rate
    head, last, full = states
    folded_stem = imagenet["features.0.0.weight"].sum(1, keepdim=True)
    block = "features.7.0.block.3.0.weight"  # in the last blocks
    # stage 1 (head): backbone weights and frozen BatchNorm statistics are still ImageNet's
    assert torch.equal(head["features.0.0.weight"], folded_stem) and torch.equal(head[block], imagenet[block])
    assert torch.equal(head["features.0.1.running_mean"], imagenet["features.0.1.running_mean"])
    # stage 2 (last): the last blocks move, the stem does not
    assert not torch.equal(last[block], imagenet[block]) and torch.equal(last["features.0.0.weight"], folded_stem)
    # stage 3 (all): everything trains
    assert not torch.equal(full["features.0.0.weight"], folded_stem)


def test_cross_validation_folds_partition_train_and_keep_test(phantom_root):
    from cxrlab.data.task import fold_view, load_task

    data = load_task(phantom_root, 28, ["cardiomegaly", "pneumothorax"])
    train_images = data.splits["train"].images
    held = []
    for k in range(3):
        view = fold_view(data, 3, k)
        assert len(view.splits["train"]) + len(view.splits["val"]) == len(train_images)
        assert view.splits["official_val"] is data.splits["val"] and view.splits["test"] is data.splits["test"]
        ratio = view.splits["val"].targets.float().mean() / data.splits["train"].targets.float().mean()
        assert 0.9 < ratio < 1.1  # stratified
        held.append({bytes(im.numpy()) for im in view.splits["val"].images})
    assert sum(map(len, held)) == len({bytes(im.numpy()) for im in train_images})  # every image held out once


def test_mixup_blends_pairs_and_smoothing_softens_targets():
    from cxrlab.training.epoch import regularised_batch

    x = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1)
    y = torch.tensor([[1.0], [0.0]] * 4)
    _, smoothed = regularised_batch(x, y, None, 0.1, torch.Generator().manual_seed(0))
    assert torch.allclose(smoothed, torch.tensor([[0.95], [0.05]] * 4))
    torch.manual_seed(0)
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    partner = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    mixed_x, mixed_y = regularised_batch(x, y, torch.distributions.Beta(0.4, 0.4), 0.0, torch.Generator().manual_seed(0))
    assert 0 < lam < 1 and not torch.equal(partner, torch.arange(8))
    # image and target are blended with the same partner and the same lambda
    assert torch.allclose(mixed_x, lam * x + (1 - lam) * x[partner]) and torch.allclose(mixed_y, lam * y + (1 - lam) * y[partner])
    assert ((mixed_y > 0) & (mixed_y < 1)).any()
