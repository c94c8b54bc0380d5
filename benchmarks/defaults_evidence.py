"""Evidence for cxrlab's training defaults, never looking at test (issue 15).

Every candidate is trained on folds 1-4 of a stratified 5-fold split of train (``cv_fold 0``), for a fixed number
of epochs without early stopping, and the weights of every epoch are kept. Afterwards the selection rules are
replayed on those saved epochs: a rule (best-checkpoint metric, early-stopping patience, threshold rule, ensemble
weights, TTA) sees only fold 0 of train, as a run sees its val split, and is judged on the official val split,
which no rule saw. Test is neither predicted nor read: ``analyse`` loads only train and val.

    # train the candidates (resumable: rerun the same command after an interruption)
    .venv/bin/python benchmarks/defaults_evidence.py train --data-root ~/.medmnist --out ~/cxrlab-evidence --workers 2
    # replay the rules on the saved epochs; prints markdown tables (the results README quotes them)
    .venv/bin/python benchmarks/defaults_evidence.py analyse --data-root ~/.medmnist --out ~/cxrlab-evidence
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from cxrlab.config import Config
from cxrlab.console import set_prefix
from cxrlab.core.runs import RunDir

EPOCHS = 30
FOLDS, FOLD = 5, 0
# name -> options over the defaults; the longest first, so that two workers finish close together
CANDIDATES = {
    "densenet121-b16": {"model": "densenet121", "batch_size": 16, "lr": 1e-4},
    "densenet121-b64": {"model": "densenet121", "batch_size": 64, "lr": 2e-4},
    "efficientnet_b0-b16": {"model": "efficientnet_b0", "batch_size": 16, "lr": 3e-4},
    "efficientnet_b0-b64": {"model": "efficientnet_b0", "batch_size": 64, "lr": 6e-4},
    "mobilenet_v3_large-b16": {"model": "mobilenet_v3_large", "batch_size": 16, "lr": 1e-3},
    "mobilenet_v3_large-b64": {"model": "mobilenet_v3_large", "batch_size": 64, "lr": 2e-3},
    "mobilenet_v3_large-b64-lr1e-3": {"model": "mobilenet_v3_large", "batch_size": 64, "lr": 1e-3},
    "mobilenet_v3_large-b64-posweight": {"model": "mobilenet_v3_large", "batch_size": 64, "lr": 2e-3, "pos_weight": "auto"},
    "mobilenet_v3_large-b64-noaug": {
        "model": "mobilenet_v3_large",
        "batch_size": 64,
        "lr": 2e-3,
        "aug_rotation": 0.0,
        "aug_translate": 0.0,
        "aug_hflip": 0.0,
        "aug_brightness": 0.0,
        "aug_contrast": 0.0,
        "aug_blur": False,
    },
}


def candidate_config(name: str, data_root: str, out: Path, epochs: int = EPOCHS) -> Config:
    return Config(
        dataset="pneumoniamnist",
        data_root=data_root,
        epochs=epochs,
        early_stopping=0,
        cv_folds=FOLDS,
        cv_fold=FOLD,
        threads=1,
        seed=0,
        n_bootstrap=100,
        out=str(out / name),
        **CANDIDATES[name],
    )


def keep_epoch(run_path: Path):
    """on_epoch callback: the model weights of every epoch, from the checkpoint the loop has just written."""
    folder = run_path / "epochs"

    def callback(epoch: int, row: dict) -> None:
        folder.mkdir(exist_ok=True)
        state = torch.load(run_path / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(folder / f"{epoch:03d}.safetensors"))

    return callback


def train_one(name: str, data_root: str, out: str, epochs: int) -> str:
    from cxrlab.training.loop import train

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cfg = candidate_config(name, data_root, Path(out), epochs)
    run = RunDir(cfg.out)
    if run.summary.is_file():
        return f"{name}: finished earlier"
    resume = run.last_checkpoint.is_file()
    if resume:
        cfg = run.load_config()
    set_prefix(f"[{name}] ")
    train(cfg, resume=resume, progress=False, on_epoch=keep_epoch(Path(cfg.out)))
    return f"{name}: finished"


def train_all(args) -> None:
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(CANDIDATES)
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(train_one, name, args.data_root, str(out), args.epochs) for name in names]
        for future in as_completed(futures):
            print(future.result(), flush=True)


# ---- analysis: rules replayed on the saved epochs ------------------------------------------------------------


def epoch_probs(name: str, out: Path, data) -> dict:
    """P(pneumonia) of every saved epoch on the selection fold and on the official val split, cached in the run."""
    from cxrlab.core.device import setup_device
    from cxrlab.evaluation.inference import predict_probs
    from cxrlab.models.registry import model_from_config

    cache = out / name / "epoch_probs.npz"
    run = RunDir(out / name)
    cfg = run.load_config()
    files = sorted((out / name / "epochs").glob("*.safetensors"))
    if cache.is_file():
        saved = dict(np.load(cache))
        if len(saved["fold"]) == len(files):
            return saved
    device = setup_device("cpu", None)
    model = model_from_config(cfg, initial_weights=False).to(memory_format=torch.channels_last)
    fold, val = [], []
    for path in files:
        model.load_state_dict(safetensors.torch.load_file(str(path)))
        fold.append(predict_probs(model, data.splits["val"].images, cfg, device)[:, 0])
        val.append(predict_probs(model, data.splits["official_val"].images, cfg, device)[:, 0])
    saved = {"fold": np.array(fold), "val": np.array(val)}
    np.savez(cache, **saved)
    return saved


def tta_probs(name: str, out: Path, data, epoch: int, views: int = 4) -> tuple[np.ndarray, np.ndarray]:
    from cxrlab.core.device import setup_device
    from cxrlab.evaluation.inference import predict_probs_tta
    from cxrlab.models.registry import model_from_config

    cfg = RunDir(out / name).load_config()
    model = model_from_config(cfg, initial_weights=False).to(memory_format=torch.channels_last)
    model.load_state_dict(safetensors.torch.load_file(str(out / name / "epochs" / f"{epoch:03d}.safetensors")))
    device = setup_device("cpu", None)
    return tuple(predict_probs_tta(model, data.splits[s].images, cfg, device, views, seed=0)[:, 0] for s in ("val", "official_val"))


def select_epoch(history: list[dict], metric: str, patience: int) -> int:
    """The 1-based epoch a run with this selection metric and early-stopping patience would have kept."""
    higher = metric != "loss"
    best, best_epoch, bad = None, None, 0
    for row in history:
        score = row[f"val_{metric}"]
        if best is None or (score > best if higher else score < best):
            best, best_epoch, bad = score, row["epoch"], 0
        else:
            bad += 1
        if patience and bad >= patience:
            break
    return best_epoch


def judged(targets, probs, threshold: float) -> dict:
    from sklearn.metrics import balanced_accuracy_score, log_loss, roc_auc_score

    predicted = probs >= threshold
    return {
        "loss": log_loss(targets, np.clip(probs, 1e-7, 1 - 1e-7)),
        "auc": roc_auc_score(targets, probs),
        "acc": float((predicted == targets).mean()),
        "bal_acc": balanced_accuracy_score(targets, predicted),
    }


def analyse(args) -> None:
    import csv

    from cxrlab.data.task import fold_view, task_data
    from cxrlab.evaluation.ensemble import combine, fit_weights
    from cxrlab.evaluation.metrics import youden_threshold

    out = Path(args.out).expanduser()
    names = [n for n in CANDIDATES if (out / n / "summary.json").is_file()]
    base = candidate_config(names[0], args.data_root, out)
    data = fold_view(task_data(base, splits=("train", "val")), FOLDS, FOLD)  # test is not loaded
    fold_t = data.splits["val"].targets.numpy()
    val_t = data.splits["official_val"].targets.numpy()
    print(
        f"Selection set: fold {FOLD} of {FOLDS} of train ({len(fold_t)} images); judged on the official val split ({len(val_t)} images).\n"
    )

    print("## Candidates: the epoch each selection rule keeps, judged on official val (threshold 0.5)\n")
    print("| candidate | s/epoch | rule (metric, patience) | epoch kept | val loss | val AUC | val acc | val bal. acc |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    kept = {}
    for name in names:
        with open(out / name / "history.csv") as fh:
            history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
        probs = epoch_probs(name, out, data)
        seconds = np.median([row["seconds"] for row in history])
        for metric in ("roc_auc", "loss"):
            for patience in (5, 10, 0):
                epoch = int(select_epoch(history, metric, patience))
                kept[name, metric, patience] = epoch
                m = judged(val_t, probs["val"][epoch - 1], 0.5)
                print(
                    f"| {name} | {seconds:.0f} | {metric}, {patience or 'none'} | {epoch} | {m['loss']:.4f} | {m['auc']:.4f} | "
                    f"{m['acc']:.3f} | {m['bal_acc']:.3f} |"
                )

    metric, patience = args.rule
    patience = int(patience)
    print(
        f"\n## Threshold rules (epoch kept by {metric}, patience {patience}; threshold chosen on the selection fold, judged on "
        f"official val)\n"
    )
    print("| candidate | rule | threshold | val acc | val bal. acc |")
    print("|---|---|---:|---:|---:|")
    for name in names:
        probs = epoch_probs(name, out, data)
        epoch = kept[name, metric, patience]
        for rule, threshold in (("0.5", 0.5), ("youden", youden_threshold(fold_t, probs["fold"][epoch - 1]))):
            m = judged(val_t, probs["val"][epoch - 1], threshold)
            print(f"| {name} | {rule} | {threshold:.3f} | {m['acc']:.3f} | {m['bal_acc']:.3f} |")

    members = [n for n in args.ensemble if n in names]
    if len(members) > 1:
        print(f"\n## Ensembles of {', '.join(members)} (each member's epoch by {metric}, patience {patience}; threshold 0.5)\n")
        print("| ensemble | weights | val loss | val AUC | val acc | val bal. acc |")
        print("|---|---|---:|---:|---:|---:|")
        fold_p = [epoch_probs(n, out, data)["fold"][kept[n, metric, patience] - 1] for n in members]
        val_p = [epoch_probs(n, out, data)["val"][kept[n, metric, patience] - 1] for n in members]
        options = {"equal": np.full(len(members), 1 / len(members)), "fitted on the selection fold": fit_weights(fold_t, fold_p)}
        for n, p in zip(members, val_p):
            m = judged(val_t, p, 0.5)
            print(f"| {n} alone | — | {m['loss']:.4f} | {m['auc']:.4f} | {m['acc']:.3f} | {m['bal_acc']:.3f} |")
        for title, weights in options.items():
            m = judged(val_t, combine(val_p, weights), 0.5)
            print(
                f"| {title} | {' / '.join(f'{w:.2f}' for w in weights)} | {m['loss']:.4f} | {m['auc']:.4f} | {m['acc']:.3f} | "
                f"{m['bal_acc']:.3f} |"
            )

        print("\n## Test-time augmentation, 4 views (same epochs; threshold 0.5 and Youden on the selection fold)\n")
        print("| candidate | TTA | val loss | val AUC | acc at 0.5 | bal. acc at 0.5 | bal. acc at Youden |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for n in members:
            epoch = kept[n, metric, patience]
            plain = (epoch_probs(n, out, data)["fold"][epoch - 1], epoch_probs(n, out, data)["val"][epoch - 1])
            for title, (fp, vp) in (("off", plain), ("4 views", tta_probs(n, out, data, epoch))):
                m = judged(val_t, vp, 0.5)
                y = judged(val_t, vp, youden_threshold(fold_t, fp))
                print(f"| {n} | {title} | {m['loss']:.4f} | {m['auc']:.4f} | {m['acc']:.3f} | {m['bal_acc']:.3f} | {y['bal_acc']:.3f} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("train", "analyse"):
        p = sub.add_parser(name)
        p.add_argument("--data-root", default="~/.medmnist")
        p.add_argument("--out", default="~/cxrlab-evidence")
    sub.choices["train"].add_argument("--workers", type=int, default=2)
    sub.choices["train"].add_argument("--epochs", type=int, default=EPOCHS, help="fewer for a smoke test")
    sub.choices["train"].add_argument("--only", nargs="+", choices=list(CANDIDATES))
    sub.choices["analyse"].add_argument("--rule", nargs=2, default=["loss", "10"], metavar=("METRIC", "PATIENCE"))
    sub.choices["analyse"].add_argument(
        "--ensemble", nargs="+", default=["mobilenet_v3_large-b64", "densenet121-b64", "efficientnet_b0-b64"]
    )
    args = parser.parse_args(argv)
    (train_all if args.command == "train" else analyse)(args)


if __name__ == "__main__":
    sys.exit(main())
