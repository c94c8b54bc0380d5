"""Start-up time: `cxrlab --help` (and a few other commands that need no model) against `python -c "import torch"`,
measured in one run, alternating, median of N. Issue 17's target: `cxrlab --help` in at most 0.15x the torch import.

    .venv/bin/python benchmarks/import_time.py [--repeats 7] [--data-root data/phantom]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

CXRLAB = shutil.which("cxrlab", path=str(Path(sys.executable).parent)) or "cxrlab"
COMMANDS = {
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
    "cxrlab --help": [CXRLAB, "--help"],
    "cxrlab train --help": [CXRLAB, "train", "--help"],
    "cxrlab status (no study)": [CXRLAB, "status", "/nonexistent"],
    "cxrlab evaluate (no run)": [CXRLAB, "evaluate", "/nonexistent"],
}


def seconds(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--data-root", help="a folder holding chestmnist.npz (e.g. data/phantom): `cxrlab data` is timed too")
    args = parser.parse_args()
    if args.data_root:
        COMMANDS["cxrlab data"] = [CXRLAB, "data", "--data-root", args.data_root]
    for cmd in COMMANDS.values():  # warm the file cache
        seconds(cmd)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, cmd in COMMANDS.items():
            times[name].append(seconds(cmd))
    torch_s = statistics.median(times['python -c "import torch"'])
    print(f"| command | median s (of {args.repeats}) | ratio to importing torch |\n|---|---:|---:|")
    for name, values in times.items():
        print(f"| `{name}` | {statistics.median(values):.3f} | {statistics.median(values) / torch_s:.3f} |")


if __name__ == "__main__":
    main()
