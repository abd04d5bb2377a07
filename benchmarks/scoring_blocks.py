"""Measure the nearest-center search rate against the number of queries scored per block.

Each block computes (block x dim) @ (dim x n_centers) and its argmax, as ``compute_scores`` does.
Every block streams the whole center matrix from memory, so small blocks are memory-bound.
This script shows where the rate levels off on the machine at hand.

    python3 benchmarks/scoring_blocks.py --centers 360000 --blocks 23,46,92,184,368
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def block_rate(centers: np.ndarray, block: int, queries: int, rng: np.random.Generator) -> float:
    """Return the GFLOP/s of scoring ``queries`` random queries against ``centers`` in blocks of ``block``."""
    batch = rng.standard_normal((block, centers.shape[1]), dtype=np.float32)
    (batch @ centers.T).argmax(axis=1)  # warm up the BLAS threads and page in the centers
    repeats = max(3, queries // block)
    started = time.perf_counter()
    for _ in range(repeats):
        (batch @ centers.T).argmax(axis=1)
    seconds = time.perf_counter() - started
    return 2.0 * block * centers.shape[1] * len(centers) * repeats / seconds / 1e9


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--centers", type=int, default=360_000, help="number of class centers")
    parser.add_argument("--dim", type=int, default=512, help="feature dimension")
    parser.add_argument("--blocks", default="23,46,92,184,368", help="comma-separated queries per block")
    parser.add_argument("--queries", type=int, default=1500, help="queries scored per block size (at least 3 blocks)")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((args.centers, args.dim), dtype=np.float32)
    for block in (int(value) for value in args.blocks.split(",")):
        gflops = block_rate(centers, block, args.queries, rng)
        queries_per_second = gflops * 1e9 / (2.0 * args.dim * args.centers)
        print(f"block {block:5d}: {gflops:6.1f} GFLOP/s, {queries_per_second:8.0f} queries/s")


if __name__ == "__main__":
    main()
