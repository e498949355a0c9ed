"""Training speed of the testbed's standard model: attention kernel, precision, processes.

Times steps of the bank's LoRA training on a built standard testbed (expert_add's records):
SDPA against eager attention, fp32 against bf16 autocast, one process with `--threads`
threads against that many one-thread processes side by side (what the bank phase does).
Configurations run in interleaved rounds so background load hits them alike; the median
round counts. Prints one JSON line; progress goes to stderr.

    .venv/bin/python benchmarks/bench_testbed_training.py [--testbed runs/testbed] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from common import standard_testbed


def step_seconds(testbed: str, attention: str, precision: str, threads: int, steps: int) -> float:
    """Seconds per LoRA training step of expert_add's recipe (after one warm-up step)."""
    import copy

    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from taskexpert.testbed.bank import adapter_records, bank_specs, lora_config
    from taskexpert.testbed.presets import get_preset
    from taskexpert.train import train

    torch.set_num_threads(threads)
    base_dir = str(Path(testbed) / "base")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation=attention)
    preset = get_preset("standard")
    spec = next(
        s for s in bank_specs(0, preset.lora_r, preset.lora_alpha) if s.name == "expert_add"
    )
    records = adapter_records(spec, preset.adapter_records, preset.adapter_pair_share)
    config = preset.adapter.model_copy(update={"mixed_precision": precision, "progress": False})
    model = get_peft_model(copy.deepcopy(base), lora_config(preset.lora_r, preset.lora_alpha))
    train(model, tokenizer, records, config.model_copy(update={"max_steps": 1}))  # warm-up
    result = train(model, tokenizer, records, config.model_copy(update={"max_steps": steps}))
    return result.seconds / result.steps


def side_by_side(testbed: str, workers: int, steps: int) -> float:
    """Seconds per step of the bank's throughput with `workers` one-thread processes."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        jobs = [
            pool.submit(step_seconds, testbed, "eager", "bf16", 1, steps) for _ in range(workers)
        ]
        per_process = [job.result() for job in jobs]
    return statistics.mean(per_process) / workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbed", default=None, help="a standard build (default runs/testbed)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    testbed = standard_testbed(args.testbed)
    if testbed is None:
        sys.exit(
            "no standard testbed: run `taskexpert testbed build --out runs/testbed "
            "--preset standard` or pass --testbed"
        )
    configs = {
        f"{attention}_{precision}": (attention, precision)
        for attention in ("sdpa", "eager")
        for precision in ("no", "bf16")
    }
    rounds: dict[str, list[float]] = {name: [] for name in [*configs, "eager_bf16_processes"]}
    began = time.perf_counter()
    for r in range(args.rounds):
        for name, (attention, precision) in configs.items():
            seconds = step_seconds(str(testbed), attention, precision, args.threads, args.steps)
            rounds[name].append(seconds)
            print(f"round {r}: {name} {seconds:.4f} s/step", file=sys.stderr, flush=True)
        seconds = side_by_side(str(testbed), args.threads, args.steps)
        rounds["eager_bf16_processes"].append(seconds)
        print(f"round {r}: {args.threads} processes {seconds:.4f} s/step", file=sys.stderr)
    median = {name: round(statistics.median(v), 4) for name, v in rounds.items()}
    print(
        json.dumps(
            {
                "benchmark": "testbed_training",
                "testbed": str(testbed),
                "threads": args.threads,
                "steps": args.steps,
                "seconds_per_step": median,
                "eager_over_sdpa_bf16": round(median["sdpa_bf16"] / median["eager_bf16"], 3),
                "processes_over_threads": round(
                    median["eager_bf16"] / median["eager_bf16_processes"], 3
                ),
                "seconds": round(time.perf_counter() - began, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
