"""Compare the synthetic features with real ArcFace features and measure accuracy against scale.

Prints three measurements for the generator parameters in the config's ``synthetic`` section:

1. the cosine statistics of the first 96 synthetic identities (all 30 samples each) next to
   the same statistics of real ArcFace features on LFW;
2. nearest-class-center top-1 accuracy for the first N identities (center = mean of the 20
   train vectors, query = test vector, cosine), for each N in ``--sizes``;
3. how well k-means on 1,000 class centers recovers the generator's supergroups.

Nothing is written to disk. With the defaults it took 62 s and 1.3 GB of memory on 2 CPU
cores. Run from the repository root:

    python benchmarks/calibrate_synthetic.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from src.config import load_config  # noqa: E402
from src.synthetic import (  # noqa: E402
    CHUNK_SIZE,
    LFW_ARCFACE_STATISTICS,
    SyntheticParams,
    generate_chunk,
    iter_chunks,
    similarity_statistics,
    synthetic_seed,
)

STATISTICS_IDENTITIES = 96
KMEANS_IDENTITIES = 1000
ROWS = (
    ("same", "same identity, two samples"),
    ("different", "different identities"),
    ("sample_to_mean", "sample to its identity mean"),
    ("between_means", "between identity means"),
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="config/config.json", help="config file whose 'synthetic' section is measured")
    parser.add_argument("--seed", type=int, help="dataset seed (default: the config's synthetic.seed)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one synthetic parameter, e.g. --set poor_fraction=0.1 (repeatable)")
    parser.add_argument("--sizes", default="100,1000,8900,50000",
                        help="comma-separated numbers of identities to measure accuracy at")
    parser.add_argument("--small-seeds", type=int, default=10,
                        help=f"number of datasets (seeds seed, seed + 1, ...) averaged for sizes up to {CHUNK_SIZE}")
    parser.add_argument("--max-queries", type=int, default=50000,
                        help="maximum test vectors per size and dataset; a random subset is used above it")
    return parser.parse_args(argv)


def normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def format_figures(figures: dict) -> str:
    return "  ".join(f"{name} {value:.3f}" for name, value in figures.items())


def print_statistics(params: SyntheticParams, seed: int) -> None:
    chunk = generate_chunk(params, seed, 0)
    vectors = chunk.vectors[:STATISTICS_IDENTITIES]
    poor = chunk.poor[:STATISTICS_IDENTITIES]
    measured = {
        "real LFW (ArcFace)": LFW_ARCFACE_STATISTICS,
        "synthetic, all samples": similarity_statistics(vectors),
        "synthetic, poor samples left out": similarity_statistics(vectors, include=~poor),
    }
    print(f"Cosine statistics, first {STATISTICS_IDENTITIES} identities, seed {seed}")
    for key, title in ROWS:
        print(f"  {title}")
        for source, statistics in measured.items():
            print(f"    {source:34s} {format_figures(statistics[key])}")

    if not poor.any():
        print("  poor samples: none")
        return
    # Cosine of each poor sample to the mean of its identity's other samples.
    totals = vectors.sum(axis=1, keepdims=True)
    to_mean = np.einsum("nsd,nsd->ns", vectors, normalize(totals - vectors))[poor]
    print(f"  poor samples: {poor.mean():.3f} of all samples; cosine to their identity mean "
          f"{to_mean.mean():.3f} (5th-95th percentile {np.percentile(to_mean, 5):.3f} to {np.percentile(to_mean, 95):.3f})")


def _prefix_data(params: SyntheticParams, seed: int, n_identities: int):
    """Return centers, test vectors and poor flags of the test vectors for identities 0..n-1."""
    centers, tests, poor = [], [], []
    low, high = params.split_bounds()["test"]
    for first, chunk in iter_chunks(params, seed, 0, n_identities):
        count = min(n_identities - first, CHUNK_SIZE)
        # Copies, so that the chunk's other samples can be freed.
        centers.append(chunk.vectors[:count, : params.n_train].mean(axis=1))
        tests.append(chunk.vectors[:count, low:high].copy())
        poor.append(chunk.poor[:count, low:high].copy())
    return np.concatenate(centers), np.concatenate(tests), np.concatenate(poor)


def _accuracies(centers, tests, poor, n_identities: int, max_queries: int, rng: np.random.Generator):
    """Return (overall, normal queries, poor queries) accuracy and the query count for a prefix."""
    queries = tests[:n_identities].reshape(-1, tests.shape[-1])
    labels = np.repeat(np.arange(n_identities), tests.shape[1])
    is_poor = poor[:n_identities].ravel()
    if len(queries) > max_queries:
        chosen = rng.choice(len(queries), max_queries, replace=False)
        queries, labels, is_poor = queries[chosen], labels[chosen], is_poor[chosen]
    correct = np.zeros(len(queries), dtype=bool)
    normalized = normalize(centers[:n_identities])
    for low in range(0, len(queries), 1024):
        scores = queries[low : low + 1024] @ normalized.T
        correct[low : low + 1024] = scores.argmax(axis=1) == labels[low : low + 1024]
    poor_accuracy = correct[is_poor].mean() if is_poor.any() else float("nan")
    normal_accuracy = correct[~is_poor].mean() if (~is_poor).any() else float("nan")
    return correct.mean(), normal_accuracy, poor_accuracy, len(queries)


def print_accuracy(params: SyntheticParams, seed: int, sizes: list[int], small_seeds: int, max_queries: int) -> None:
    print("\nNearest-class-center top-1 (center = mean of train vectors, query = test vector, cosine)")
    print(f"  {'identities':>10} {'top-1':>7} {'normal q.':>9} {'poor q.':>8} {'queries':>8} {'datasets':>8} {'seconds':>7}")
    rng = np.random.default_rng(0)
    small = [size for size in sizes if size <= CHUNK_SIZE]
    large = [size for size in sizes if size > CHUNK_SIZE]

    for size in small:
        started = time.perf_counter()
        rows = []
        for dataset_seed in range(seed, seed + small_seeds):
            rows.append(_accuracies(*_prefix_data(params, dataset_seed, size), size, max_queries, rng))
        rows = np.array(rows)
        weights = rows[:, 3]
        figures = [np.average(rows[:, column], weights=weights) for column in range(3)]
        print(f"  {size:>10} {figures[0]:>7.4f} {figures[1]:>9.4f} {figures[2]:>8.4f} {int(weights.sum()):>8} "
              f"{small_seeds:>8} {time.perf_counter() - started:>7.1f}")

    if large:
        started = time.perf_counter()
        data = _prefix_data(params, seed, max(large))
        generated = time.perf_counter() - started
        for size in large:
            started = time.perf_counter()
            overall, normal, poor_accuracy, n_queries = _accuracies(*data, size, max_queries, rng)
            print(f"  {size:>10} {overall:>7.4f} {normal:>9.4f} {poor_accuracy:>8.4f} {n_queries:>8} {1:>8} "
                  f"{time.perf_counter() - started:>7.1f}")
        print(f"  generating {max(large)} identities took {generated:.1f} s")


def print_kmeans(params: SyntheticParams, seed: int) -> None:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    chunk = generate_chunk(params, seed, 0)
    count = min(KMEANS_IDENTITIES, CHUNK_SIZE)
    centers = normalize(chunk.vectors[:count, : params.n_train].mean(axis=1))
    truth = chunk.supergroups[:count]
    found = KMeans(n_clusters=params.n_supergroups, n_init=3, random_state=0).fit_predict(centers)
    print(f"\nk-means (k = {params.n_supergroups}) on {count} class centers: adjusted Rand index "
          f"{adjusted_rand_score(truth, found):.3f} against the supergroups (1 = recovered, 0 = chance)")


def main(argv=None) -> None:
    args = parse_args(argv)
    config = load_config(args.config)
    values = dict(config.synthetic)
    for item in args.set:
        key, separator, value = item.partition("=")
        if not separator:
            raise SystemExit(f"invalid --set {item!r}: expected KEY=VALUE, e.g. --set poor_fraction=0.1")
        try:
            values[key] = json.loads(value)
        except json.JSONDecodeError:
            raise SystemExit(f"invalid --set {item!r}: the value must be a JSON number, e.g. 0.1 or 512") from None
    try:
        params = SyntheticParams.from_dict(values)
    except ValueError as error:
        raise SystemExit(f"invalid --set: {error}") from None
    if args.set:
        print(f"overrides: {', '.join(args.set)}")
    seed = synthetic_seed(config) if args.seed is None else args.seed
    sizes = sorted(int(size) for size in args.sizes.split(","))

    started = time.perf_counter()
    print_statistics(params, seed)
    print_accuracy(params, seed, sizes, args.small_seeds, args.max_queries)
    print_kmeans(params, seed)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
