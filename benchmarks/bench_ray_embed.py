"""Sentence embedding in one process against Ray Data with N actors (scaleout.embed).

    .venv/bin/python benchmarks/bench_ray_embed.py                 # 4,000 texts, MiniLM
    .venv/bin/python benchmarks/bench_ray_embed.py --texts 1000    # quicker

Texts: the built-in sample pool's record texts, numbered copies beyond its 2,000. One process
embeds them with `SentenceEncoder` (torch on as many threads as there are actors); Ray embeds
them into shards of `--shard-rows` through `map_batches` with one-thread actors, actor start and
model load included. Prints one JSON line: seconds, the ratio (Ray / one process), texts per
second, and the largest absolute difference between the two embeddings.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=4000)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--shard-rows", type=int, default=1000)
    args = parser.parse_args()

    import ray
    import torch

    from taskexpert.embed import SentenceEncoder
    from taskexpert.records import load_records
    from taskexpert.scaleout.embed import embed_to_shards

    sample = Path(__file__).parents[1] / "src" / "taskexpert" / "data" / "sample" / "pool.jsonl"
    base = [r.text for r in load_records(sample)]
    texts = [base[i % len(base)] + ("" if i < len(base) else f" #{i}") for i in range(args.texts)]

    torch.set_num_threads(args.actors)
    t = time.perf_counter()
    encoder = SentenceEncoder(device="cpu")
    one = encoder.embed(texts, progress=False)
    one_s = time.perf_counter() - t
    print(f"one process {one_s:.1f}s", file=sys.stderr)

    t = time.perf_counter()
    ray.init(num_cpus=args.actors + 1, include_dashboard=False, configure_logging=False,
             log_to_driver=False)  # fmt: skip
    ray_start = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        shards, _, _ = embed_to_shards(
            ray, texts, tmp, "default", actors=args.actors, device="cpu",
            shard_rows=args.shard_rows, progress=False,
        )  # fmt: skip
        ray_s = time.perf_counter() - t
        sharded = np.concatenate([s.open() for s in shards])
    ray.shutdown()
    print(f"ray {ray_s:.1f}s", file=sys.stderr)
    result = {
        "bench": "ray_embed",
        "texts": args.texts,
        "actors": args.actors,
        "shard_rows": args.shard_rows,
        "one_process_s": round(one_s, 2),
        "ray_s": round(ray_s, 2),
        "ray_start_s": round(ray_start, 2),
        "ratio": round(ray_s / one_s, 3),
        "one_process_texts_per_s": round(args.texts / one_s, 1),
        "ray_texts_per_s": round(args.texts / ray_s, 1),
        "max_abs_diff": float(np.abs(sharded - one).max()),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
