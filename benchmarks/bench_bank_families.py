"""Which adapters of a bank the default family rule counts as one family (issue 19, item 2).

Weights only, no model pass: the plain delta cosine and the centered weight similarity
(experts/diversity.py) of every pair, and the pairs at or above the default thresholds
(`max_pair_similarity`: a copy; `family_weight_similarity`: one task). On a testbed bank the
truth says which pairs are twins; on a real bank it shows what the rule does to related tasks.

    .venv/bin/python benchmarks/bench_bank_families.py --bank runs/real/bank

Prints the joined pairs on stderr and one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import numpy as np

from taskexpert.bank import load_bank
from taskexpert.experts.config import ExpertSelectionConfig
from taskexpert.experts.diversity import similarity_matrix
from taskexpert.experts.family import same_family


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", required=True, help="a bank directory or manifest")
    parser.add_argument("--top", type=int, default=20, help="pairs listed on stderr")
    args = parser.parse_args()
    defaults = ExpertSelectionConfig.model_fields
    copy_at = defaults["max_pair_similarity"].default
    family_at = defaults["family_weight_similarity"].default
    began = time.perf_counter()
    bank = load_bank(args.bank)
    sim = similarity_matrix(bank.adapters)
    pairs = [
        {"a": a, "b": b, "plain": round(float(sim(a, b)), 4),
         "centered": None if (c := sim.centered_similarity(a, b)) is None else round(c, 4)}
        for a, b in itertools.combinations(sim.names, 2)
    ]  # fmt: skip
    pairs.sort(key=lambda p: -(p["centered"] if p["centered"] is not None else -np.inf))
    # the rule's own test (weights only: no generations, so no behaviour threshold)
    joined = [
        p for p in pairs
        if same_family(p["a"], p["b"], sim, None, copy_at, None, family_at) is not None
    ]  # fmt: skip
    for p in pairs[: args.top]:
        mark = "joined" if p in joined else ""
        print(f"{p['a']:<26} {p['b']:<26} centered {p['centered']} plain {p['plain']} {mark}",
              file=sys.stderr)  # fmt: skip
    centered = np.array([p["centered"] for p in pairs if p["centered"] is not None])
    plain = np.array([p["plain"] for p in pairs])
    print(json.dumps({
        "benchmark": "bank_families", "bank": str(args.bank), "adapters": len(sim.names),
        "rejected": bank.rejected, "pairs": len(pairs),
        "thresholds": {"max_pair_similarity": copy_at, "family_weight_similarity": family_at},
        "plain": {"median": round(float(np.median(plain)), 4), "max": round(float(plain.max()), 4)},
        "centered": {"median": round(float(np.median(centered)), 4),
                     "max": round(float(centered.max()), 4)} if centered.size else None,
        "joined": [[p["a"], p["b"], p["centered"], p["plain"]] for p in joined],
        "all_pairs": pairs, "seconds": round(time.perf_counter() - began, 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
