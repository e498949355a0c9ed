"""K-center greedy in one process against Ray local mode with N actors (scaleout.kcenter).

    .venv/bin/python benchmarks/bench_ray_kcenter.py                  # 10^6 x 384, 50 picks
    .venv/bin/python benchmarks/bench_ray_kcenter.py --rows 100000    # quicker

The matrix is written once to a temp .npy and memory-mapped by both paths (the actors map
their shards of the same file). Alternates one-process and Ray runs `--repeats` times; Ray's
time counts from the first shard call (cluster start and actor start are reported apart).
Prints one JSON line: seconds of each run, the overhead ratio (median Ray / median one
process), whether the picks are equal, and per-shard throughput (shard rows x picks / s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_matrix(path: Path, n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for lo in range(0, n, 65536):
        hi = min(n, lo + 65536)
        out[lo:hi] = rng.standard_normal((hi - lo, dim), dtype=np.float32)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import ray

    from taskexpert.scaleout.kcenter import sharded_kcenter
    from taskexpert.scaleout.shards import matrix_shards
    from taskexpert.selection.kcenter import default_chunk_rows, kcenter_greedy

    with tempfile.TemporaryDirectory() as tmp:
        matrix = write_matrix(Path(tmp) / "e.npy", args.rows, args.dim, args.seed)
        began = time.perf_counter()
        ray.init(num_cpus=args.actors + 1, include_dashboard=False, configure_logging=False,
                 log_to_driver=False)  # fmt: skip
        ray_start = time.perf_counter() - began
        chunk = default_chunk_rows(args.dim)
        shards = matrix_shards(matrix, args.actors, chunk)
        one_s, ray_s, equal = [], [], True
        for repeat in range(args.repeats):
            t = time.perf_counter()
            expected = kcenter_greedy(matrix, args.k, seed=repeat, progress=False)
            one_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            got = sharded_kcenter(
                ray, shards, args.k, seed=repeat, progress=False, chunk_rows=chunk
            )
            ray_s.append(time.perf_counter() - t)
            equal = equal and got == expected
            print(f"repeat {repeat}: one {one_s[-1]:.2f}s ray {ray_s[-1]:.2f}s", file=sys.stderr)
        ray.shutdown()
    shard_rows = max(s.rows for s in shards)
    # passes per run: the mean (1), the row statistics (1), one per pick after the first (k-1)
    passes = args.k + 1
    result = {
        "bench": "ray_kcenter",
        "rows": args.rows,
        "dim": args.dim,
        "k": args.k,
        "actors": len(shards),
        "one_process_s": [round(s, 3) for s in one_s],
        "ray_s": [round(s, 3) for s in ray_s],
        "ray_start_s": round(ray_start, 2),
        "overhead_ratio": round(statistics.median(ray_s) / statistics.median(one_s), 3),
        "picks_equal": equal,
        "one_process_rows_per_s": round(args.rows * passes / statistics.median(one_s)),
        "per_shard_rows_per_s": round(shard_rows * passes / statistics.median(ray_s)),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
