"""Calibration of a built testbed on more problems than the build's own 40 per family.

Draws `--problems` new held-out full-level problems per family (fewer where the family has
fewer distinct ones: multiply has 42), in the bank's wording, and scores the base model and
each family's expert on them, as the build's calibration does. Prints one JSON line.

    .venv/bin/python benchmarks/bench_testbed_calibration.py [--testbed DIR] [--problems 200]
    .venv/bin/python benchmarks/bench_testbed_calibration.py --seeds 0,1,2 \
        --testbed 'runs/tb/standard-s{seed}'
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from common import standard_testbed

from taskexpert.evaluate import evaluate_exact_match
from taskexpert.peft_glue import merged_lora
from taskexpert.testbed.baselines import CALIBRATION_LIMITS, within_limit
from taskexpert.testbed.families import FAMILIES, held_out_records
from taskexpert.testbed.layout import BANK_DIR, BASE_DIR
from taskexpert.testbed.model import load_built_base


def calibrate(testbed: Path, args: argparse.Namespace) -> dict:
    """Base and each family's expert on fresh held-out problems, plus the build's own
    two-skill ceilings (baselines.json), against the limits."""
    began = time.perf_counter()
    base, tokenizer = load_built_base(testbed / BASE_DIR)
    rng = random.Random(args.seed)
    opts = {"batch_size": args.batch_size, "max_new_tokens": 112}
    families = {}
    for name in FAMILIES:
        records = held_out_records(FAMILIES[name], args.problems, rng, name)
        expert = merged_lora(base, testbed / BANK_DIR / f"expert_{name}")
        families[name] = {
            "problems": len(records),
            "base": round(evaluate_exact_match(base, tokenizer, records, **opts)["exact_match"], 3),
            "expert": round(
                evaluate_exact_match(expert, tokenizer, records, **opts)["exact_match"], 3
            ),
        }
        print(f"{testbed.name} {name}: {families[name]}", file=sys.stderr, flush=True)
    targets = json.loads((testbed / "baselines.json").read_text())["targets"]
    ceilings = {
        t: s["ceiling_lora"] for t, s in targets.items() if s.get("ceiling_lora") is not None
    }
    found = {
        "min_expert": min(f["expert"] for f in families.values()),
        "max_base": max(f["base"] for f in families.values()),
        "min_ceiling": min(ceilings.values(), default=None),
    }
    met = {k: v is not None and within_limit(k, v) for k, v in found.items()}
    return {
        "testbed": str(testbed), "problems": args.problems, "families": families,
        "ceilings": ceilings, **found, "met": met, "all_met": all(met.values()),
        "seconds": round(time.perf_counter() - began, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--testbed", default=None,
        help="a standard build (default runs/testbed); with --seeds a pattern with {seed}, "
        "e.g. runs/tb/standard-s{seed}",
    )  # fmt: skip
    parser.add_argument("--seeds", default=None, help="comma-separated build seeds")
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--seed", type=int, default=12345, help="draws, apart from the build's")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    if args.seeds:
        if not args.testbed or "{seed}" not in args.testbed:
            sys.exit("--seeds needs --testbed with {seed} in it")
        testbeds = [Path(args.testbed.format(seed=int(s))) for s in args.seeds.split(",")]
    else:
        testbed = standard_testbed(args.testbed)
        if testbed is None:
            sys.exit("no standard testbed: build one or pass --testbed")
        testbeds = [testbed]
    builds = {t.name: calibrate(t, args) for t in testbeds}
    for name, build in builds.items():
        print(f"{name:<14} min expert {build['min_expert']:.3f}  max base {build['max_base']:.3f}  "
              f"min ceiling {build['min_ceiling']}  all limits met: {build['all_met']}",
              file=sys.stderr)  # fmt: skip
    print(
        json.dumps(
            {"benchmark": "testbed_calibration", "limits": CALIBRATION_LIMITS, "builds": builds}
        )
    )


if __name__ == "__main__":
    main()
