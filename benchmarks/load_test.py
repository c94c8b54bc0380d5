"""Load on a running `cxrlab serve`: N requests at concurrency C to POST /predict; p50/p95 latency, throughput, errors.

    .venv/bin/cxrlab serve runs/demo/runs/efficientnet_b0-seed0 --port 8000 &
    .venv/bin/python benchmarks/load_test.py --url http://127.0.0.1:8000 --requests 1000 --concurrency 16

Images: PNGs of random val-like noise by default, or --image FILE. Every non-200 answer and every transport
error counts as an error; the exit code is 1 when there was any (the target is zero).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def sample_pngs(n: int = 16) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).resize((128, 128)).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


async def run(url: str, requests: int, concurrency: int, images: list[bytes], explain_every: int) -> dict:
    latencies, errors = [], []
    limit = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, i: int) -> None:
        async with limit:
            image = images[i % len(images)]
            t0 = time.perf_counter()
            try:
                if explain_every and i % explain_every == 0:
                    response = await client.post(f"{url}/explain", files={"file": (f"{i}.png", image, "image/png")})
                else:
                    response = await client.post(f"{url}/predict", files={"files": (f"{i}.png", image, "image/png")})
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            latencies.append((time.perf_counter() - t0) * 1000)

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        (await client.get(f"{url}/health")).raise_for_status()
        started = time.perf_counter()
        await asyncio.gather(*(one(client, i) for i in range(requests)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": requests,
        "concurrency": concurrency,
        "errors": len(errors),
        "first_errors": errors[:5],
        "p50_ms": statistics.median(latencies),
        "p95_ms": latencies[int(0.95 * (len(latencies) - 1))],
        "throughput_rps": requests / wall,
        "wall_s": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--image", help="PNG/JPEG/DICOM file to send (default: 16 generated PNGs)")
    parser.add_argument("--explain-every", type=int, default=0, metavar="K", help="make every K-th request a POST /explain (default: none)")
    args = parser.parse_args()
    images = [Path(args.image).read_bytes()] if args.image else sample_pngs()
    result = asyncio.run(run(args.url.rstrip("/"), args.requests, args.concurrency, images, args.explain_every))
    print(
        f"{result['requests']} requests, concurrency {result['concurrency']}: p50 {result['p50_ms']:.1f} ms, p95 "
        f"{result['p95_ms']:.1f} ms, "
        f"{result['throughput_rps']:.1f} requests/s, errors {result['errors']}"
    )
    for e in result["first_errors"]:
        print("  error:", e)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
