"""Encoder throughput on real pool texts (issue 2, item 8b): texts/s and tokens/s.

Default encoder (all-MiniLM-L6-v2, length-sorted batches, 256-token cap) against the static
model2vec encoder distilled from it, on the same seeded sample of open-pool texts. Tokens are
counted with each encoder's own tokenizer after truncation (what it actually processes). No cache.

    .venv/bin/python benchmarks/bench_encoder.py --shared /work/shared/data --n 2000

Prints one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

from common import SHARED_DATA


def _timed_embed(encoder, texts, batch_size):
    start = time.perf_counter()
    vectors = encoder.embed(texts, batch_size=batch_size)
    return vectors, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=SHARED_DATA)
    parser.add_argument("--n", type=int, default=2000, help="texts for the default encoder")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from taskexpert.embed import SentenceEncoder, StaticEncoder
    from taskexpert.importers import import_all_pools

    pool = [r.text for r in import_all_pools(args.shared)]
    texts = random.Random(args.seed).sample(pool, min(args.n, len(pool)))
    load_start = os.getloadavg()[0]
    results: dict[str, dict] = {}

    default = SentenceEncoder()
    t = time.perf_counter()
    default.model  # noqa: B018 - time the load apart from the embedding
    load_s = time.perf_counter() - t
    tokenizer = default.tokenizer
    ids = tokenizer(texts, truncation=True, max_length=default.max_seq_length)["input_ids"]
    tokens = sum(len(x) for x in ids)
    print(f"default: {len(texts)} texts, {tokens} tokens", file=sys.stderr)
    _, seconds = _timed_embed(default, texts, args.batch_size)
    results["default"] = {
        "name": default.name,
        "load_s": round(load_s, 2),
        "texts": len(texts),
        "mean_tokens": round(tokens / len(texts), 1),
        "truncated_share": round(
            sum(len(x) >= default.max_seq_length for x in ids) / len(texts), 4
        ),
        "seconds": round(seconds, 2),
        "texts_per_s": round(len(texts) / seconds, 1),
        "tokens_per_s": round(tokens / seconds, 1),
    }

    static = StaticEncoder()
    t = time.perf_counter()
    static.model  # noqa: B018 - distils on the first run, then loads from disk
    static_load_s = time.perf_counter() - t
    model = static.model
    for label, sample in (("static", texts), ("static_full_pool", pool)):
        static_tokens = sum(len(x) for x in model.tokenize(sample))
        _, seconds = _timed_embed(static, sample, 1024)
        results[label] = {
            "texts": len(sample),
            "mean_tokens": round(static_tokens / len(sample), 1),
            "seconds": round(seconds, 2),
            "texts_per_s": round(len(sample) / seconds, 1),
            "tokens_per_s": round(static_tokens / seconds, 1),
        }
    results["static"] |= {"name": static.name, "load_or_distill_s": round(static_load_s, 2)}
    speedup = results["static"]["texts_per_s"] / results["default"]["texts_per_s"]
    print(
        json.dumps(
            {
                "bench": "encoder",
                "batch_size": args.batch_size,
                "max_seq_length": default.max_seq_length,
                "static_speedup_texts_per_s": round(speedup, 1),
                "default_full_pool_estimate_s": round(
                    len(pool) / results["default"]["texts_per_s"]
                ),
                "cpu_count": os.cpu_count(),
                "load_avg_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
                "encoders": results,
            }
        )
    )


if __name__ == "__main__":
    main()
