"""select-data on the real open pool (issue 2, items 8c and 9): cold and warm wall time, quality.

The pool is every importable open-pool dataset of ../shared/data (about 52k records). The K-shot
is 50 GSM8K train items (seeded); their questions are removed from the pool (FLAN's gsm8k_train
repeats GSM8K train). Quality: the share of selected records from a math source (FLAN CoT's
GSM8K train rows and AQuA), target >= 0.95. Also the source mix for the rocket ARC-Challenge
50-shot. Each config starts from an empty embedding cache (cold), then runs again (warm).

    .venv/bin/python benchmarks/bench_select_data.py --shared /work/shared/data
    .venv/bin/python benchmarks/bench_select_data.py --configs static,two-stage  # skip slow one

Prints one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

MATH_SOURCES = {"flan_cot/gsm8k", "flan_cot/aqua"}
CONFIGS = ("default", "static", "two-stage")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _embedders(config: str):
    from taskexpert.embed import SentenceEncoder, StaticEncoder

    if config == "default":
        return SentenceEncoder(), None
    if config == "static":
        return StaticEncoder(), None
    return SentenceEncoder(), StaticEncoder()


def _run(pool, kshot, budget, config, cache_dir, mode):
    from taskexpert.embed import EmbeddingCache
    from taskexpert.selection.retrieve import select_data

    embedder, shortlist = _embedders(config)
    cache = EmbeddingCache(cache_dir)
    t = time.perf_counter()
    result = select_data(
        pool, kshot, budget, mode=mode, embedder=embedder, shortlist_embedder=shortlist, cache=cache
    )
    return result, time.perf_counter() - t


def _warm_cli(pool_file: Path, kshot_file: Path, budget: int, config: str, cache_dir: Path, mode):
    """Wall time of the real command (fresh process: imports, file reading, all of it)."""
    cli = Path(sys.executable).with_name("taskexpert")
    encoder = "static" if config == "static" else "default"
    cmd = [str(cli), "select-data", "--pool", str(pool_file), "--kshot", str(kshot_file)]
    cmd += [
        "--budget",
        str(budget),
        "--mode",
        mode,
        "--encoder",
        encoder,
        "--cache",
        str(cache_dir),
    ]
    cmd += ["--out", str(cache_dir.parent / f"selected-{config}.jsonl")]
    cmd += ["--two-stage"] if config == "two-stage" else []
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--kshot-size", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", default="centroid", choices=["centroid", "max"])
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help="comma list of " + str(CONFIGS)
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="where the caches go (tmp)")
    parser.add_argument("--limit", type=int, default=None, help="first N pool records (smoke)")
    parser.add_argument("--no-arc", action="store_true", help="skip the ARC source-mix run")
    parser.add_argument(
        "--warm-only", action="store_true", help="reuse the caches in --work-dir, skip cold runs"
    )
    args = parser.parse_args()

    from taskexpert.embed import StaticEncoder
    from taskexpert.importers import import_all_pools, import_dataset

    t = time.perf_counter()
    train = list(import_dataset("gsm8k", args.shared / "gsm8k", split="train"))
    kshot = random.Random(args.seed).sample(train, args.kshot_size)
    dropped: Counter = Counter()
    pool = list(
        import_all_pools(
            args.shared, exclude_instructions=[r.instruction for r in kshot], dropped=dropped
        )
    )
    if args.limit:
        pool = pool[: args.limit]
    arc = list(import_dataset("rocket-arc", args.shared / "rocket-arc-kshot/arc-c_50shot.jsonl"))
    load_s = time.perf_counter() - t
    _log(f"pool {len(pool)} records ({dict(dropped)} dropped), loaded in {load_s:.1f}s")

    # The distilled static model is a one-off (cached on disk like a download); time it apart.
    t = time.perf_counter()
    static_dim = StaticEncoder().dim
    distill_or_load_s = time.perf_counter() - t

    from taskexpert.records import write_records

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_select_data."))
    work.mkdir(parents=True, exist_ok=True)
    pool_file, kshot_file = work / "pool.jsonl", work / "kshot.jsonl"
    write_records(pool_file, pool)
    write_records(kshot_file, kshot)
    results: dict[str, dict] = {}
    for config in args.configs.split(","):
        cache_dir = work / f"cache-{config}"
        cold = cold_s = None
        if not args.warm_only:
            if cache_dir.exists() and any(cache_dir.iterdir()):
                raise SystemExit(f"{cache_dir} is not empty: a cold run needs an empty cache")
            _log(f"[{config}] cold run, cache {cache_dir}")
            cold, cold_s = _run(pool, kshot, args.budget, config, cache_dir, args.mode)
            _log(f"[{config}] cold {cold_s:.1f}s")
        _log(f"[{config}] warm run")
        warm, warm_s = _run(pool, kshot, args.budget, config, cache_dir, args.mode)
        warm_cli_s = _warm_cli(pool_file, kshot_file, args.budget, config, cache_dir, args.mode)
        arc_result = arc_s = None
        if not args.no_arc:
            arc_result, arc_s = _run(pool, arc, args.budget, config, cache_dir, args.mode)
        sources = warm.summary["selected_per_source"]
        math = sum(n for s, n in sources.items() if s in MATH_SOURCES)
        results[config] = {}
        if cold is not None:
            first_stage_s = cold.summary["timings_s"]["pool_pass_s"]
            results[config] = {
                "cold_s": round(cold_s, 2),
                "cold_pool_pass_s": first_stage_s,
                "cold_pool_texts_per_s": round(len(pool) / first_stage_s, 1),
                "cold_timings_s": cold.summary["timings_s"],
                "selected_ids_same_cold_warm": [r.id for r in cold.records]
                == [r.id for r in warm.records],
            }
        results[config] |= {
            "warm_s": round(warm_s, 2),
            "warm_cli_s": round(warm_cli_s, 2),
            "warm_timings_s": warm.summary["timings_s"],
            "selected": warm.summary["selected"],
            "removed_duplicates": warm.summary["removed_duplicates"],
            "math_share": round(math / max(1, warm.summary["selected"]), 4),
            "vendi_score": warm.summary["vendi_score"],
            "gsm8k_source_mix": sources,
            "arc_source_mix": arc_result.summary["selected_per_source"] if arc_result else None,
            "arc_s": round(arc_s, 2) if arc_s is not None else None,
        }
        _log(f"[{config}] {json.dumps(results[config])}")
    if {"default", "two-stage"} <= results.keys() and not args.warm_only:
        results["two_stage_vs_default"] = {
            "cold_speedup": round(results["default"]["cold_s"] / results["two-stage"]["cold_s"], 2),
            "math_share_diff": round(
                results["two-stage"]["math_share"] - results["default"]["math_share"], 4
            ),
        }
    print(
        json.dumps(
            {
                "bench": "select_data",
                "pool_size": len(pool),
                "kshot": f"gsm8k train, {args.kshot_size} items, seed {args.seed}",
                "budget": args.budget,
                "mode": args.mode,
                "load_s": round(load_s, 2),
                "static_distill_or_load_s": round(distill_or_load_s, 2),
                "static_dim": static_dim,
                "cpu_count": os.cpu_count(),
                "load_avg_end": [round(x, 2) for x in os.getloadavg()],
                "configs": results,
            }
        )
    )


if __name__ == "__main__":
    main()
