"""A run's finish (val and test metrics, the OOD check's fit, 8 figures) against its one phantom epoch: what every
short run pays once, in the test suite above all. Trains RUNS one-epoch MobileNetV3 runs on a phantom in one
process and reports the median of all but the first (which pays for first imports and font loading).

    .venv/bin/python benchmarks/finish_time.py [--runs 4] [--work /tmp/cxrlab-finish]

To compare two trees, run it once with each on PYTHONPATH (PYTHONPATH=OTHER/src .venv/bin/python ...), alternating.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--work", default="/tmp/cxrlab-finish", help="scratch folder (emptied first)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    import cxrlab.evaluation.ood as ood
    import cxrlab.evaluation.plots as plots
    import cxrlab.training.loop as loop
    from cxrlab.config import Config
    from cxrlab.data.phantom import write_phantom

    spent = {"finish": [], "ood fit": [], "savefig": []}

    def timed(name, function):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                spent[name][-1] += time.perf_counter() - start

        return wrapper

    loop.finalize_run = timed("finish", loop.finalize_run)
    ood.fit_run_check = timed("ood fit", ood.fit_run_check)
    plots._save = timed("savefig", plots._save)  # where the 8 figures are drawn
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    write_phantom(work / "phantom", size=28, seed=0, split_sizes={"train": 800, "val": 200, "test": 200})  # tests/conftest.py's SMALL
    totals = []
    for i in range(args.runs):
        for values in spent.values():
            values.append(0.0)
        cfg = Config(data_root=str(work / "phantom"), epochs=1, batch_size=32, n_bootstrap=50, device="cpu", out=str(work / f"run{i}"))
        start = time.perf_counter()
        loop.train(cfg, progress=False)
        totals.append(time.perf_counter() - start)
    warm = slice(1, None) if args.runs > 1 else slice(None)
    print(f"{args.runs} one-epoch runs (the first not counted), median seconds")
    print(f"  whole run {statistics.median(totals[warm]):.2f}")
    for name, values in spent.items():
        print(f"  {name:<9} {statistics.median(values[warm]):.2f}")


if __name__ == "__main__":
    main()
