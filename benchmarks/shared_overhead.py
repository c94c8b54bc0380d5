"""What sharing a study through a database costs (issue 26), on a throwaway PostgreSQL server on this machine:

1. per run: claiming it, one heartbeat, marking it complete (training/shared.py's engine with runs that train
   nothing), PostgreSQL and SQLite, median over 60 runs;
2. a one-machine study (compare: 1 model x 2 seeds, 3 epochs, phantom data, 2 workers x 1 thread) by the local
   runner and through PostgreSQL, wall time, interleaved, ``--repeats`` each;
3. a grid search (27 points, 1 epoch each, small phantom file) through PostgreSQL with 1 and 2 worker processes:
   how the wall time falls as workers are added on this machine's cores.

    python benchmarks/shared_overhead.py            # about 6 minutes on 2 cores

Prints a Markdown table for benchmarks/README.md. Needs Debian's postgresql (`make postgres`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.postgres: the throwaway server

from cxrlab.data.phantom import write_phantom
from cxrlab.training import shared as engine
from tests.postgres import throwaway_server


def per_run_ms(url: str, runs: int = 60) -> tuple[float, float]:
    """(median ms from claim to complete for a run that trains nothing, median ms of one heartbeat)."""
    shared = engine.Shared(url, "overhead", heartbeat_s=30)
    with tempfile.TemporaryDirectory() as folder:
        engine.join(shared, [f"run{i}" for i in range(runs)], {"runs": {}}, Path(folder))
        stamps = []

        def run_key(key: str, trial_id: int) -> float:
            stamps.append(time.perf_counter())
            return 0.0

        started = time.perf_counter()
        engine.work(shared, run_key)
        ended = time.perf_counter()
        storage = engine.open_storage(shared)
        beats = []
        for _ in range(runs):
            t0 = time.perf_counter()
            storage.record_heartbeat(1)
            beats.append(time.perf_counter() - t0)
    gaps = [b - a for a, b in zip([started, *stamps], [*stamps[1:], ended])]
    return 1000 * statistics.median(gaps), 1000 * statistics.median(beats)


def cxrlab(*args) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cxrlab", *map(str, args)], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with throwaway_server() as database, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        claim_pg, beat_pg = per_run_ms(database("overhead"))
        claim_lite, beat_lite = per_run_ms(f"sqlite:///{tmp / 'overhead.db'}")
        rows.append(("per run: claim + complete (no training)", f"{claim_pg:.1f} ms", f"SQLite {claim_lite:.1f} ms"))
        rows.append(("one heartbeat", f"{beat_pg:.1f} ms", f"SQLite {beat_lite:.1f} ms"))

        data = tmp / "phantom"
        write_phantom(data, size=28, seed=0, split_sizes={"train": 800, "val": 200, "test": 200})
        study = ["compare", "--data-root", data, "--models", "mobilenet_v3_large", "--seeds", "0", "1", "--ensemble", "off"]
        study += ["--tta", "0", "--epochs", "3", "--batch-size", "32", "--n-bootstrap", "20", "--device", "cpu"]
        study += ["--workers", "2", "--threads", "1", "--no-progress"]
        local, shared = [], []
        for i in range(args.repeats):  # interleaved, so a slow spell of the machine hits both
            local.append(cxrlab(*study, "--out", tmp / f"local{i}"))
            shared.append(cxrlab(*study, "--out", tmp / f"shared{i}", "--storage", database(f"study{i}")))
        rows.append(
            (
                "compare, 2 runs x 3 epochs, 2 workers: local runner",
                f"{statistics.median(local):.1f} s",
                "through PostgreSQL " + f"{statistics.median(shared):.1f} s ({statistics.median(shared) / statistics.median(local):.2f}x)",
            )
        )

        small = tmp / "small"
        write_phantom(small, size=28, seed=3, split_sizes={"train": 160, "val": 80, "test": 40})
        grid = ["search", "--method", "grid", "--data-root", small, "--model", "mobilenet_v3_large", "--epochs", "1"]
        grid += ["--n-bootstrap", "20", "--device", "cpu", "--threads", "1"]
        walls = {w: cxrlab(*grid, "--workers", w, "--out", tmp / f"grid{w}", "--storage", database(f"grid{w}")) for w in (1, 2)}
        rows.append(
            (
                "grid search, 27 points x 1 epoch: 1 worker",
                f"{walls[1]:.1f} s",
                f"2 workers {walls[2]:.1f} s ({walls[1] / walls[2]:.2f}x faster; {os.cpu_count()} cores)",
            )
        )
    print("| measured | value | against |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
