"""Evaluation cost on multiple-choice test sets: one prompt pass against separate passes.

`evaluate_model` scores a record with choices twice over: the generated answer (exact match)
and each option's log-likelihood. The reference path makes a forward pass over the whole
prompt per option and another to generate (`evaluate_exact_match` + `evaluate_multiple_choice`);
the default path computes each batch's prompt once and feeds its KV cache to every option and
to generation (`lm.generate_and_score`). This runs both on the same records in one process,
alternating rounds, and reports each path's seconds (median of the rounds), their ratio, and
how far the results are apart (max |option log-prob| difference, differing generations and
picks).

    .venv/bin/python benchmarks/bench_evaluate.py --base smollm2 \\
        --test runs/real/targets/arc_easy/test.jsonl --items 64

Prints one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from taskexpert.evaluate import evaluate_exact_match, evaluate_model, evaluate_multiple_choice
from taskexpert.models import load_base
from taskexpert.records import load_records


def reference(model, tokenizer, records, batch_size: int, max_new_tokens: int) -> dict:
    em = evaluate_exact_match(
        model, tokenizer, records, batch_size=batch_size, max_new_tokens=max_new_tokens
    )
    mc = evaluate_multiple_choice(model, tokenizer, records, batch_size=batch_size)
    by_id = {p["id"]: p for p in mc["predictions"]}
    for prediction in em["predictions"]:
        prediction.update(by_id.get(prediction["id"], {}))
    return em


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="smollm2")
    parser.add_argument("--test", required=True, help="a JSONL test set with choices")
    parser.add_argument("--items", type=int, default=64, help="the first N records")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    records = load_records(args.test)[: args.items]
    model, tokenizer = load_base(args.base)
    model.eval()
    settings = {"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens}
    seconds: dict[str, list[float]] = {"reference": [], "shared": []}
    results: dict[str, dict] = {}
    for round_ in range(args.rounds):
        for path in ("reference", "shared") if round_ % 2 == 0 else ("shared", "reference"):
            start = time.perf_counter()
            if path == "reference":
                results[path] = reference(model, tokenizer, records, **settings)
            else:
                results[path] = evaluate_model(model, tokenizer, records, **settings)
            seconds[path].append(time.perf_counter() - start)
            print(f"round {round_} {path}: {seconds[path][-1]:.1f} s", file=sys.stderr)
    pairs = list(
        zip(results["reference"]["predictions"], results["shared"]["predictions"], strict=True)
    )
    scored = [(a, b) for a, b in pairs if "option_logprobs" in a]
    median = {path: statistics.median(s) for path, s in seconds.items()}
    print(
        json.dumps(
            {
                "benchmark": "evaluate",
                "base": args.base,
                "test": args.test,
                "items": len(records),
                "with_choices": len(scored),
                "threads": torch.get_num_threads(),
                **settings,
                "rounds": args.rounds,
                "seconds_reference": round(median["reference"], 2),
                "seconds_shared": round(median["shared"], 2),
                "speedup": round(median["reference"] / median["shared"], 2),
                "seconds_all_rounds": {p: [round(x, 2) for x in s] for p, s in seconds.items()},
                "max_option_logprob_diff": max(
                    (
                        abs(x - y)
                        for a, b in scored
                        for x, y in zip(a["option_logprobs"], b["option_logprobs"], strict=True)
                    ),
                    default=0.0,
                ),
                "generations_differ": sum(a["generated"] != b["generated"] for a, b in pairs),
                "picks_differ": sum(a["mc_prediction"] != b["mc_prediction"] for a, b in scored),
            }
        )
    )


if __name__ == "__main__":
    main()
