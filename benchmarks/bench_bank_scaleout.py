"""Bank scoring in-process against Ray workers: seconds per adapter on the micro testbed.

Scores the micro testbed's bank (repeated R times under new names to emulate larger banks)
on one target's K-shot, once with `score_bank` in this process and once with
`score_bank_distributed` on W Ray actors, checks that both give the same EM/RPPL/PPL, and
reports wall seconds per adapter. The Ray wall time includes starting the actors (each
imports torch and loads the base) but not starting the cluster, which is reported apart.
On a 2-core machine shared with other jobs expect no gain: the micro model scores an adapter
in tens of milliseconds, so the actors' fixed start-up cost dominates.

    .venv/bin/python benchmarks/bench_bank_scaleout.py [--workers 2] [--repeats 1 4]

Prints one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from taskexpert.bank import load_bank
from taskexpert.experts.distributed import base_loader, import_ray, score_bank_distributed
from taskexpert.experts.scoring import BASE_ROW, ScoringConfig, prepare_kshot, score_bank
from taskexpert.records import load_records


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def same_scores(a: dict, b: dict) -> bool:
    """Both paths run the same code on the same weights: EM equal, perplexities allclose."""
    return list(a) == list(b) and all(
        a[n].em == b[n].em
        and math.isclose(a[n].rppl, b[n].rppl, rel_tol=1e-5)
        and math.isclose(a[n].ppl, b[n].ppl, rel_tol=1e-5)
        for n in a
    )


def run(args) -> dict:
    from taskexpert.testbed import build_testbed

    torch.set_num_threads(1)
    ray = import_ray()
    tmp = tempfile.TemporaryDirectory()
    root = args.testbed or Path(tmp.name) / "micro"
    log(f"micro testbed at {root} ...")
    testbed = build_testbed(root, "micro", 0, progress=False)
    target = args.target or testbed.targets[0]
    load = base_loader(testbed.base_dir, device="cpu")
    model, tokenizer = load()
    bank = load_bank(testbed.bank_dir, model)
    config = ScoringConfig(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    task = prepare_kshot(load_records(testbed.kshot_path(target)), tokenizer, config)
    start = time.perf_counter()
    ray.init(
        num_cpus=max(2, args.workers),
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
    )
    cluster_seconds = time.perf_counter() - start
    rows = []
    for repeat in args.repeats:
        adapters = {f"{n}@{k}": a for k in range(repeat) for n, a in bank.adapters.items()}
        start = time.perf_counter()
        local = score_bank(model, tokenizer, adapters, task, config, progress=False)
        local_wall = time.perf_counter() - start
        start = time.perf_counter()
        remote = score_bank_distributed(
            load, adapters, task, config, workers=args.workers, progress=False
        )
        remote_wall = time.perf_counter() - start
        rows.append(
            {
                "bank_size": len(adapters),
                "in_process_seconds_per_adapter": round(local_wall / len(adapters), 4),
                "ray_seconds_per_adapter": round(remote_wall / len(adapters), 4),
                "in_process_wall_seconds": round(local_wall, 3),
                "ray_wall_seconds": round(remote_wall, 3),
                # the switch+score time of one adapter as measured inside a worker
                "ray_worker_median_seconds_per_adapter": round(
                    statistics.median(s.seconds for n, s in remote.items() if n != BASE_ROW), 4
                ),
                "same_scores": same_scores(local, remote),
            }
        )
        log(f"bank {len(adapters)}: {rows[-1]}")
    ray.shutdown()
    tmp.cleanup()
    return {
        "benchmark": "bank_scaleout",
        "model": "testbed (micro)",
        "target": target,
        "kshot": len(task),
        "max_new_tokens": task.max_new_tokens,
        "workers": args.workers,
        "threads_per_worker": 1,
        "cpu_cores": os.cpu_count(),
        "ray_version": ray.__version__,
        "ray_cluster_start_seconds": round(cluster_seconds, 3),
        "rows": rows,
        "note": "2 shared cores: the actors' start-up (import torch, load the base) dominates "
        "on the micro model; Ray pays off when one adapter costs seconds (7B) and each worker "
        "has its own GPU",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--target", default=None, help="testbed target whose K-shot is scored")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--testbed", type=Path, default=None, help="reuse a micro build here")
    print(json.dumps(run(parser.parse_args())))


if __name__ == "__main__":
    main()
