"""Study speed: the same small study trained one run after another with every thread, then side by side with
the default workers (cxrlab.training.runner.plan), in one run of this script; prints both wall times and the ratio.

The study is compare's training: phantom ChestMNIST with the official binary counts (2,306 train / 305 val
images at 28 px), the three models x 2 seeds, fixed epochs (no early stopping). Scoring and the report are the
same work either way and are left out. Runs go to a temporary folder; nothing is reused between the two ways.

    .venv/bin/python benchmarks/study_speed.py                  # 1 epoch per run
    .venv/bin/python benchmarks/study_speed.py --epochs 2 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from cxrlab.config import Config, resolve
from cxrlab.console import set_prefix
from cxrlab.data.phantom import write_phantom
from cxrlab.models.architectures import STUDY_MODELS
from cxrlab.training.runner import available_cores, plan, run_all


def study_configs(base: Config, out: Path, models: list[str], seeds: list[int]) -> dict:
    return {(m, s): resolve(replace(base, model=m, seed=s, out=str(out / f"{m}-seed{s}"))) for s in seeds for m in models}


def timed(configs: dict, workers: int | None, threads: int | None) -> float:
    started = time.perf_counter()
    set_prefix("    ")
    run_all(configs, progress=False, workers=workers, threads=threads)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per run (default: 1)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds per model (default: 0 1)")
    parser.add_argument("--models", nargs="+", default=list(STUDY_MODELS), help="models (default: the three of the study)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size (default: 16, the study's)")
    args = parser.parse_args()

    cores = available_cores()
    n_runs = len(args.models) * len(args.seeds)
    side = plan(n_runs, "cpu", 28)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_phantom(root / "data", size=28, official_counts=True)
        base = Config(
            data_root=str(root / "data"), epochs=args.epochs, early_stopping=0, batch_size=args.batch_size, n_bootstrap=50, device="cpu"
        )
        print(
            f"{n_runs} runs ({', '.join(args.models)} x seeds {args.seeds}), {args.epochs} epoch(s) each, batch {args.batch_size}; "
            f"{cores} cores, torch {torch.__version__}, {platform.processor() or platform.machine()}"
        )
        print(f"one after another, {cores} threads each:")
        sequential = timed(study_configs(base, root / "sequential", args.models, args.seeds), workers=1, threads=cores)
        print(f"side by side, default workers ({side.describe()}):")
        parallel = timed(study_configs(base, root / "side_by_side", args.models, args.seeds), workers=None, threads=None)
    print(f"\none after another: {sequential:.0f} s   side by side: {parallel:.0f} s   speed-up {sequential / parallel:.2f}x")


if __name__ == "__main__":
    main()
