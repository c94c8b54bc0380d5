"""Epoch time of every model on a CUDA GPU at 28 and 224 px, fp32, bf16 autocast and fp16 autocast with a gradient scaler: a
table for the README.

Phantom ChestMNIST files with 2,000 binary-task training images (and 300 val) at each size; each configuration
trains 2 epochs through `cxrlab train`'s loop and the second epoch counts (the first pays for cuDNN's kernel
choice). Images/s is training images over the epoch's seconds, validation included.

    .venv/bin/python benchmarks/gpu_epoch.py            # part of benchmarks/gpu_check.sh
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import torch

from cxrlab.config import MODEL_NAMES, Config
from cxrlab.data.phantom import write_phantom
from cxrlab.training.loop import train

SPLITS = {"train": 4000, "val": 600, "test": 600}  # half of each are binary-task rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 224])
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES))
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible to torch: this benchmark times the GPU path")
    print(
        f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}, {time.strftime('%Y-%m-%d')}, "
        f"batch {args.batch_size}"
    )
    print("| model | size | precision | s/epoch | train images/s |\n|---|---:|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            root = Path(tmp) / f"data{size}"
            write_phantom(root, size=size, split_sizes=SPLITS)
            for model in args.models:
                for precision in ("fp32", "bf16", "fp16"):
                    out = Path(tmp) / f"{model}-{size}-{precision}"
                    cfg = Config(
                        data_root=str(root),
                        size=size,
                        model=model,
                        epochs=2,
                        early_stopping=0,
                        batch_size=args.batch_size,
                        precision=precision,
                        n_bootstrap=50,
                        device="cuda",
                        out=str(out),
                    )
                    run = train(cfg, progress=False)
                    with open(run.history) as fh:
                        seconds = float(list(csv.DictReader(fh))[-1]["seconds"])
                    print(f"| {model} | {size} | {precision} | {seconds:.2f} | {SPLITS['train'] // 2 / seconds:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
