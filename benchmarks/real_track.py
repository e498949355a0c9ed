"""The real-model track (issue 17): `taskexpert run` on SmolLM2 for each real target.

Per target (examples/real/<target>.yaml): the mixture against the base model, the best single
bank adapter, the uniform merge and a plain LoRA, over the config's seeds, with the verdict's
bootstrap intervals. Prepares what the configs read when it is missing: the target files
(`taskexpert targets make`) and the open pool (every open-pool record of ../shared/data) under
--work; the bank must be built first (`taskexpert bank build`, examples/bank/smollm2.yaml).

--smoke runs the same pipeline on a tiny budget, to show it works end to end in minutes: a
seeded 12-item K-shot, a 30-item test subset, a 1,500-record pool sample, 40 selected
records, one pass at batch 4 and 160 tokens. Its numbers say nothing about the methods.

--floors scores only each target's model-free floor, the K-shot's commonest answer on the
test items, as the verdict scores it (`verdict.majority_floor`): seconds, no model; for runs
made before the verdict showed it.

Prints a table on stderr and one JSON line on stdout.

  .venv/bin/python benchmarks/real_track.py                              # all four targets
  .venv/bin/python benchmarks/real_track.py --smoke --target arc_easy --bank runs/real/bank
  .venv/bin/python benchmarks/real_track.py --floors
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from common import REPO_ROOT, SHARED_DATA

from taskexpert.importers import import_all_pools
from taskexpert.importers.target_sets import TARGETS, make_targets
from taskexpert.majority import majority_answer
from taskexpert.recipes.run import run_method
from taskexpert.recipes.run_config import RunConfig, load_run_config
from taskexpert.records import load_records, write_records

EXAMPLES = REPO_ROOT / "examples" / "real"
SMOKE = {"kshot": 12, "test": 30, "pool": 1500, "budget": 40}
SMOKE_TRAIN = {
    "epochs": 1.0, "batch_size": 4, "micro_batch_size": 4, "max_length": 160,
    "checkpoint_every": 0, "log_every": 2,
}  # fmt: skip


def prepare(work: Path, data: Path, test_size: int | None) -> None:
    """Target files and the pool under `work`, made once (same seed, same bytes); the targets
    are remade when they were carved with another test cap."""
    summary = work / "targets" / "targets.json"
    if not summary.is_file() or json.loads(summary.read_text()).get("test_size") != test_size:
        make_targets(data, work / "targets", seed=0, test_size=test_size)
    if not (work / "pool.jsonl").is_file():
        write_records(work / "pool.jsonl", import_all_pools(data))


def _sample(path: Path, count: int, out: Path, seed: int = 0) -> Path:
    records = load_records(path)
    if len(records) > count:
        picks = sorted(random.Random(f"{seed}:{path.name}").sample(range(len(records)), count))
        records = [records[i] for i in picks]
    write_records(out, records)
    return out


def smoke_config(config: RunConfig, work: Path, bank_size: int) -> RunConfig:
    """The target's config on tiny inputs and a tiny schedule (same stages, same code)."""
    work.mkdir(parents=True, exist_ok=True)
    # top-1: select-experts may keep fewer experts than top_k (it drops adapters below the
    # base on the K-shot); the measured smoke run failed at train-moe with top_k 2 and 1 expert
    train = config.train.model_copy(update={**SMOKE_TRAIN, "top_k": 1})
    select = config.select_experts.model_copy(
        update={"n": min(config.select_experts.n, bank_size), "max_new_tokens": 32}
    )
    evaluate = config.evaluate.model_copy(
        update={"max_new_tokens": min(config.evaluate.max_new_tokens or 32, 32)}
    )
    return config.model_copy(
        update={
            "kshot": _sample(config.kshot, SMOKE["kshot"], work / "kshot.jsonl"),
            "test": _sample(config.test, SMOKE["test"], work / "test.jsonl"),
            "pools": [_sample(config.pools[0], SMOKE["pool"], work / "pool.jsonl")],
            "budget": SMOKE["budget"],
            "train": train,
            "select_experts": select,
            "evaluate": evaluate,
        }
    )


def run_target(name: str, args: argparse.Namespace) -> dict:
    config = load_run_config(EXAMPLES / f"{name}.yaml")
    targets = args.work / "targets" / name  # what prepare() made, wherever --work is
    config = config.model_copy(update={
        "kshot": targets / "kshot.jsonl", "test": targets / "test.jsonl",
        "pools": [args.work / "pool.jsonl"],
    })  # fmt: skip
    if args.bank is not None:
        config = config.model_copy(update={"bank": args.bank.resolve()})
    if not Path(config.bank).is_dir():
        sys.exit(f"no bank at {config.bank}: taskexpert bank build --config "
                 "examples/bank/smollm2.yaml --out runs/real/bank")  # fmt: skip
    out = args.work / ("smoke" if args.smoke else "runs") / name
    if args.smoke:
        bank = Path(config.bank)
        bank_size = sum(1 for p in bank.iterdir() if (p / "adapter_config.json").is_file())
        config = smoke_config(config, args.work / "smoke-inputs" / name, bank_size)
    began = time.perf_counter()
    result = run_method(config, out, resume=True, progress=not args.quiet)
    seconds = time.perf_counter() - began
    manifest = json.loads((out / "manifest.json").read_text())
    stages = {k: round(v.get("seconds", 0.0), 1) for k, v in manifest["stages"].items()}
    verdict = result.verdict
    return {
        "target": name,
        "items": verdict.n_items,
        "kshot": result.split["kshot"],
        "winner": verdict.winner,
        "sentence": verdict.sentence,
        "methods": {
            m.method: {
                "mean": round(m.mean, 4),
                "low": round(m.low, 4),
                "high": round(m.high, 4),
                "per_seed": [round(s, 4) for s in m.per_seed],
            }
            for m in verdict.methods
        },  # fmt: skip
        "references": {
            r.method: {
                "detail": r.detail,
                "mean": round(r.mean, 4),
                "low": round(r.low, 4),
                "high": round(r.high, 4),
            }
            for r in verdict.references
        },  # fmt: skip
        "warnings": verdict.warnings,
        "cautions": verdict.cautions,
        "seconds": round(seconds, 1),
        "stage_seconds": stages,
        "ran": len(result.ran),
        "reused": len(result.reused),
        "run_dir": str(out),
    }


def floor(name: str, args: argparse.Namespace) -> dict:
    """The target's K-shot-commonest-answer floor on its test items, with the interval its
    verdict would give it."""
    from taskexpert.verdict import bootstrap_interval

    config = load_run_config(EXAMPLES / f"{name}.yaml")
    targets = args.work / "targets" / name
    kshot, test = load_records(targets / "kshot.jsonl"), load_records(targets / "test.jsonl")
    found = majority_answer(kshot, test, config.evaluate.metric)
    if found is None:
        return {"target": name, "items": len(test), "floor": None}
    settings = config.verdict
    low, high = bootstrap_interval(found.scores, settings.confidence, settings.resamples)
    mean = sum(found.scores) / len(found.scores)
    return {
        "target": name,
        "items": len(test),
        "floor": {
            "detail": found.detail,
            "mean": round(mean, 4),
            "low": round(low, 4),
            "high": round(high, 4),
        },
    }


def table(results: list[dict]) -> str:
    lines = [f"{'target':<14} {'method':<15} {'mean':>6}  {'interval':<15} {'per seed':<16}"]
    for result in results:
        for method, score in result["methods"].items():
            seeds = ", ".join(f"{s:.3f}" for s in score["per_seed"])
            lines.append(
                f"{result['target']:<14} {method:<15} {score['mean']:>6.3f}  "
                f"{score['low']:.3f} to {score['high']:.3f}  {seeds:<16}"
            )
        for ref in result.get("references", {}).values():
            lines.append(f"{result['target']:<14} {'reference':<15} {ref['mean']:>6.3f}  "
                         f"{ref['low']:.3f} to {ref['high']:.3f}  {ref['detail']}")  # fmt: skip
        lines.append(f"{'':<14} {result['items']} items, {result['seconds']:.0f}s: "
                     f"{result['sentence']}")  # fmt: skip
        lines += [f"{'':<14} caution: {c}" for c in result["cautions"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", choices=TARGETS, help="repeat; default all")
    parser.add_argument("--smoke", action="store_true", help="tiny budget: works end to end")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "runs" / "real")
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--bank", type=Path, default=None, help="default: the configs' bank")
    parser.add_argument(
        "--test-size", type=int, default=300,
        help="seeded cap on each test set (0: whole test sets; GSM8K is 200 either way)",
    )  # fmt: skip
    parser.add_argument("--floors", action="store_true", help="only each target's floor")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    args.work = args.work.resolve()
    began = time.perf_counter()
    prepare(args.work, args.data, args.test_size or None)
    prepared = time.perf_counter() - began
    if args.floors:
        floors = [floor(name, args) for name in (args.target or TARGETS)]
        for row in floors:
            got = row["floor"]
            shown = (f"{got['mean']:.3f}  {got['low']:.3f} to {got['high']:.3f}  {got['detail']}"
                     if got else "no answer recurs in the K-shot")  # fmt: skip
            print(f"{row['target']:<14} {shown}", file=sys.stderr)
        print(json.dumps({"benchmark": "real_track_floors", "targets": floors}))
        return
    results = [run_target(name, args) for name in (args.target or TARGETS)]
    print(table(results), file=sys.stderr)
    print(json.dumps({
        "benchmark": "real_track", "smoke": args.smoke, "prepare_seconds": round(prepared, 1),
        "seconds": round(time.perf_counter() - began, 1), "targets": results,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
