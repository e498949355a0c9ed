"""DiverseEvol quality on the testbed (issue 6, item 4): exact match after every round for
K-center, random, one-shot K-center and the uncertainty baselines, against full-pool training.

    .venv/bin/python benchmarks/bench_diverseevol_quality.py --testbed DIR --out-dir /tmp/dq
    .venv/bin/python benchmarks/bench_diverseevol_quality.py --quick     # micro testbed, minutes

--real (issue 17, item 4): the same on SmolLM2-135M-Instruct over a seeded sample of the real
open pool (runs/real/pool.jsonl, `benchmarks/real_track.py` makes it), evaluated on
`--eval-per-family` test items of each real target (ARC-Challenge, ARC-Easy, BoolQ, GSM8K;
exact match of the generated answer, averaged over the four). The issue's setup, sized for a
GPU (about 80 minutes per embedding pass of 10,000 records on one CPU thread here):

    .venv/bin/python benchmarks/bench_diverseevol_quality.py --real --pool-size 10000 \
        --init 200 --per-round 200 --rounds 3 --seeds 0,1 --eval-per-family 100 \
        --strategies kcenter,random,kmeans-filtered --out-dir runs/real/diverseevol
    .venv/bin/python benchmarks/bench_diverseevol_quality.py --real --quick --seeds 0 \
        --strategies kcenter,random --jobs 1          # CPU smoke: 11 min on 1 busy thread

The smoke (60 records, 2 rounds of 8, 8 eval items) shows the path works end to end; its
numbers say nothing about the methods.

The pool is a fixed random sample of the testbed pool (`--pool-size`, the same for every run),
so "full pool" is that sample. Every (strategy, seed) is one `run_diverseevol` run directory;
the full-pool reference trains the same LoRA recipe (same epochs) on the whole sample once per
seed. Evaluation: `--eval-per-family` held-out calibration items of every family; the score is
exact match averaged over the families (macro). Run directories resume, so a rerun with the same
--out-dir reuses every finished round. Prints one JSON line (curves, reference, verdict) on
stdout and a Markdown table on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from common import REPO_ROOT, standard_testbed

# The recipe each model moves with: the testbed's tiny model takes 10 epochs at 3e-3; SmolLM2
# one pass at 1e-3, as the real track trains it (examples/real).
RECIPE = {"testbed": {"epochs": 10.0, "lr": 3e-3}, "real": {"epochs": 1.0, "lr": 1e-3}}
# --quick sizes: minutes on a CPU. SmolLM2 embeds about 2 records/s on one thread, so its pool
# is smaller; 24 new tokens leave room for "The answer is ..." and a number.
QUICK = {
    "testbed": {"pool_size": 200, "init": 10, "per_round": 10, "rounds": 2, "epochs": 2.0,
                "eval_per_family": 3, "max_new_tokens": 16},
    "real": {"pool_size": 60, "init": 8, "per_round": 8, "rounds": 2, "epochs": 1.0,
             "eval_per_family": 2, "max_new_tokens": 24},
}  # fmt: skip

STRATEGIES = [
    "kcenter",
    "random",
    "kcenter-oneshot",
    "least-confidence",
    "margin",
    "entropy",
    "kcenter-robust",
    "kmeans",
    "kmeans-robust",
    "kmeans-filtered",
]
ROBUST = "-robust"  # label suffix: the strategy with --outlier-share of the pool left out
FILTERED = "-filtered"  # ... and the base model's high-loss tail (--loss-outlier-z) too


def log(message: str) -> None:
    print(f"[dq] {message}", file=sys.stderr, flush=True)


def read_truth(testbed: Path) -> dict:
    """testbed.json, or what a partial build (tokenizer, base and data phases only) implies."""
    if (testbed / "testbed.json").is_file():
        return json.loads((testbed / "testbed.json").read_text())
    calibration = sorted((testbed / "calibration").glob("*.jsonl"))
    if not calibration or not (testbed / "base").is_dir():
        raise SystemExit(f"{testbed}: neither a testbed build nor its base/pool/calibration")
    partial = testbed / "partial.json"
    preset = json.loads(partial.read_text())["preset"] if partial.is_file() else "unknown"
    with open(testbed / "pool.jsonl") as handle:
        size = sum(1 for line in handle if line.strip())
    return {
        "build": {"preset": f"{preset} (partial build: tokenizer, base, data)"},
        "pool": {"size": size},
        "families": {p.stem: {"calibration": f"calibration/{p.name}"} for p in calibration},
    }


def write_eval_sample(path: Path, files: dict[str, Path], per_family: int) -> None:
    """A seeded `per_family` items of each family's file, each tagged with its family (exact
    match is averaged over the families)."""
    from taskexpert.records import load_records, write_records

    rng, items = random.Random(54321), []
    for family, file in files.items():
        records = load_records(file)
        for record in rng.sample(records, min(per_family, len(records))):
            record.source = family
            items.append(record)
    write_records(path, items)


def prepare_real(args) -> dict:
    """The real track's pool sample and `--eval-per-family` seeded test items per target, into
    --out-dir (once; reused when present). The pool stays on disk while sampling."""
    from taskexpert.importers.target_sets import TARGETS, TEST_FILE
    from taskexpert.record_file import open_records, take
    from taskexpert.records import write_records

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.real_work)
    needed = [work / "pool.jsonl", *(work / "targets" / t / TEST_FILE for t in TARGETS)]
    missing = [path for path in needed if not path.is_file()]
    if missing:
        raise SystemExit(f"{missing[0]} is missing: run benchmarks/real_track.py once first")
    whole = open_records(work / "pool.jsonl")
    pool_path, eval_path = out / "pool.jsonl", out / "eval.jsonl"
    if not pool_path.exists():
        size = min(args.pool_size, len(whole)) if args.pool_size else len(whole)
        rows = sorted(random.Random(12345).sample(range(len(whole)), size))
        write_records(pool_path, take(whole, rows))
    if not eval_path.exists():
        files = {target: work / "targets" / target / TEST_FILE for target in TARGETS}
        write_eval_sample(eval_path, files, args.eval_per_family)
    return _setup(args, pool_path, eval_path, "real: SmolLM2-135M-Instruct", len(whole),
                  list(TARGETS))  # fmt: skip


def _setup(args, pool_path: Path, eval_path: Path, preset: str, whole: int, families: list
           ) -> dict:  # fmt: skip
    from taskexpert.records import load_records

    sources: dict[str, int] = {}
    for record in load_records(pool_path):
        sources[record.source or ""] = sources.get(record.source or "", 0) + 1
    return {
        "testbed": args.testbed,
        "preset": preset,
        "pool": str(pool_path),
        "pool_size": sum(sources.values()),
        "testbed_pool_size": whole,
        "pool_sources": dict(sorted(sources.items(), key=lambda kv: -kv[1])),
        "eval": str(eval_path),
        "eval_size": len(load_records(eval_path)),
        "families": families,
    }


def prepare(args) -> dict:
    """Sample the pool and the evaluation set into --out-dir (once; reused when present)."""
    from taskexpert.records import load_records, write_records

    if args.real:
        return prepare_real(args)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    testbed = Path(args.testbed)
    truth = read_truth(testbed)
    pool_path, eval_path = out / "pool.jsonl", out / "eval.jsonl"
    if not pool_path.exists():
        pool = load_records(testbed / "pool.jsonl")
        rng = random.Random(12345)
        size = min(args.pool_size, len(pool)) if args.pool_size else len(pool)
        write_records(pool_path, sorted(rng.sample(pool, size), key=lambda r: r.id))
    if not eval_path.exists():
        families = truth["families"].items()
        files = {family: testbed / info["calibration"] for family, info in families}
        write_eval_sample(eval_path, files, args.eval_per_family)
    return _setup(args, pool_path, eval_path, truth["build"]["preset"], truth["pool"]["size"],
                  list(truth["families"]))  # fmt: skip


def make_config(args, setup: dict, strategy: str, seed: int):
    from taskexpert.recipes.diverseevol import DiverseEvolConfig
    from taskexpert.train import TrainConfig

    filtered = strategy.endswith(FILTERED)
    robust = filtered or strategy.endswith(ROBUST)
    return DiverseEvolConfig(
        base="smollm2" if args.real else str(Path(args.testbed) / "base"),
        pool=Path(setup["pool"]),
        init=args.init,
        per_round=args.per_round,
        rounds=args.rounds,
        strategy=strategy.removesuffix(ROBUST).removesuffix(FILTERED),
        outlier_share=args.outlier_share if robust else 0.0,
        loss_outlier_z=args.loss_outlier_z if filtered else 0.0,
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        train=TrainConfig(
            epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, max_length=192
        ),
        eval=Path(setup["eval"]),
        eval_max_new_tokens=args.max_new_tokens,
        eval_batch_size=64,
        embed_batch_size=64,
        seed=seed,
        threads=args.threads,
        progress=False,
    )


def subset_coverage(run_dir: Path, setup: dict, rounds: int) -> list[dict]:
    """Per round: how many pool sources the subset covers, how evenly (normalised entropy of
    its source shares) and its share of the pool's noise items: what K-center should change."""
    from taskexpert.records import load_records

    sources = [r.source or "" for r in load_records(setup["pool"])]
    in_pool = set(sources)
    out = []
    for index in range(rounds):
        rows = json.loads((run_dir / "rounds" / f"{index:02d}" / "selection.json").read_text())
        picked = [sources[i] for i in rows["rows"]]
        counts = np.array([picked.count(s) for s in sorted(set(picked))], dtype=float)
        shares = counts / counts.sum()
        entropy = float(-(shares * np.log(shares)).sum() / np.log(len(in_pool)))
        out.append(
            {
                "sources_covered": len(set(picked)),
                "sources_in_pool": len(in_pool),
                "source_entropy": round(entropy, 3),
                "noise_share": round(picked.count("noise") / len(picked), 3),
            }
        )
    return out


def one_run(args, setup: dict, strategy: str, seed: int) -> dict:
    """One DiverseEvol run (resumed if its directory holds finished rounds)."""
    from taskexpert.recipes.diverseevol import LEAKAGE_FILE, run_diverseevol

    began = time.perf_counter()
    run_dir = Path(args.out_dir) / f"{strategy}-seed{seed}"
    result = run_diverseevol(make_config(args, setup, strategy, seed), run_dir)
    coverage = subset_coverage(run_dir, setup, len(result.rounds))
    leakage = run_dir / LEAKAGE_FILE  # the pool rows left out as evaluation items
    return {
        "strategy": strategy,
        "seed": seed,
        "pool_rows_left_out_as_eval_items": (
            len(json.loads(leakage.read_text())["rows"]) if leakage.is_file() else 0
        ),
        "seconds": round(time.perf_counter() - began, 1),
        "rounds": [
            {
                "size": s["size"],
                "em": s["exact_match_macro"],
                "em_by_family": s["exact_match_by_source"],
                "vendi": s["vendi"],
                "round_seconds": s["seconds"],
                **cover,
            }
            for s, cover in zip(result.rounds, coverage)
        ],
    }


def share_base_embeddings(args, setup: dict, jobs: list[tuple[str, int]]) -> None:
    """The base model's pool embeddings depend on neither strategy nor seed: compute them once
    and hard-link them (file and marker) into every run directory that lacks them."""
    import torch

    from taskexpert.recipes.diverseevol_rounds import BASE_EMBEDDINGS, RoundRunner
    from taskexpert.records import load_records

    torch.set_num_threads(args.threads)
    shared = Path(args.out_dir) / "shared-base"
    config = make_config(args, setup, "random", 0)
    run = RoundRunner(config, shared, load_records(config.pool), None)
    run.load_base()
    shared.mkdir(parents=True, exist_ok=True)
    run.ensure_base_embeddings()
    files = [BASE_EMBEDDINGS, Path(BASE_EMBEDDINGS).with_suffix(".json").name]
    for strategy, seed in jobs:
        run_dir = Path(args.out_dir) / f"{strategy}-seed{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in files:
            if not (run_dir / name).exists():
                os.link(shared / name, run_dir / name)


def full_pool(args, setup: dict, seed: int) -> dict:
    """The reference line: the same LoRA recipe trained on the whole pool sample."""
    import torch

    from taskexpert.io import write_json
    from taskexpert.recipes.diverseevol_rounds import RoundRunner, trainable_model
    from taskexpert.records import load_records
    from taskexpert.train import train

    torch.set_num_threads(args.threads)
    path = Path(args.out_dir) / f"full-pool-seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    began = time.perf_counter()
    config = make_config(args, setup, "random", seed)
    run = RoundRunner(
        config, Path(args.out_dir), load_records(config.pool), load_records(config.eval)
    )
    run.load_base()
    model = trainable_model(run.base, config, 0)
    recipe = config.train.model_copy(update={"seed": seed, "progress": False})
    trained = train(model, run.tokenizer, run.pool, recipe)
    report = run.evaluate(model)
    base_report = run.evaluate(run.base) if seed == 0 else None
    result = {
        "seed": seed,
        "size": len(run.pool),
        "em": report["exact_match_macro"],
        "em_by_family": report["exact_match_by_source"],
        "train_steps": trained.steps,
        "seconds": round(time.perf_counter() - began, 1),
        "base_em": base_report["exact_match_macro"] if base_report else None,
    }
    write_json(path, result)
    return result


def summarise(runs: list[dict], references: list[dict], setup: dict, args) -> dict:
    curves = {}
    for strategy in args.strategies:
        mine = [r for r in runs if r["strategy"] == strategy]
        if not mine:
            continue
        rounds = []
        for index in range(min(len(r["rounds"]) for r in mine)):
            ems = [r["rounds"][index]["em"] for r in mine]
            vendis = [r["rounds"][index]["vendi"] for r in mine]
            rounds.append(
                {
                    "size": mine[0]["rounds"][index]["size"],
                    "share": round(mine[0]["rounds"][index]["size"] / setup["pool_size"], 4),
                    "em_mean": round(float(np.mean(ems)), 4),
                    "em_std": round(float(np.std(ems)), 4),
                    "vendi_mean": round(float(np.mean(vendis)), 3),
                    "sources_covered_mean": round(
                        float(np.mean([r["rounds"][index]["sources_covered"] for r in mine])), 2
                    ),
                    "source_entropy_mean": round(
                        float(np.mean([r["rounds"][index]["source_entropy"] for r in mine])), 3
                    ),
                    "noise_share_mean": round(
                        float(np.mean([r["rounds"][index]["noise_share"] for r in mine])), 3
                    ),
                }
            )
        curves[strategy] = rounds
    full = [r["em"] for r in references]
    reference = {
        "size": setup["pool_size"],
        "em_mean": round(float(np.mean(full)), 4),
        "em_std": round(float(np.std(full)), 4),
        "train_steps": references[0]["train_steps"],
    }
    verdict = {}
    if "kcenter" in curves:
        final = curves["kcenter"][-1]
        verdict["kcenter_final_share"] = final["share"]
        verdict["kcenter_final_minus_full"] = round(final["em_mean"] - reference["em_mean"], 4)
        if "random" in curves:
            random_final = curves["random"][-1]["em_mean"]
            verdict["kcenter_final_minus_random"] = round(final["em_mean"] - random_final, 4)
            per_seed = []
            for seed in args.seeds:
                k = next(r for r in runs if r["strategy"] == "kcenter" and r["seed"] == seed)
                q = next(r for r in runs if r["strategy"] == "random" and r["seed"] == seed)
                per_seed.append(k["rounds"][-1]["em"] - q["rounds"][-1]["em"])
            verdict["kcenter_beats_random_seeds"] = sum(d > 0 for d in per_seed)
            verdict["seeds"] = len(per_seed)
    return {"curves": curves, "full_pool": reference, "verdict": verdict}


def table(summary: dict, base_em: float | None) -> str:
    curves = summary["curves"]
    sizes = [r["size"] for r in next(iter(curves.values()))]
    lines = [
        "| strategy | " + " | ".join(str(s) for s in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for name, rounds in curves.items():
        cells = [f"{r['em_mean']:.3f}±{r['em_std']:.3f}" for r in rounds]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    full = summary["full_pool"]
    lines.append(f"| full pool ({full['size']}) | {full['em_mean']:.3f}±{full['em_std']:.3f} |")
    if base_em is not None:
        lines.append(f"| base model | {base_em:.3f} |")
    lines += ["", "| strategy (final round) | vendi | sources covered | source entropy | noise |"]
    lines.append("|---|---|---|---|---|")
    for name, rounds in curves.items():
        last = rounds[-1]
        lines.append(
            f"| {name} | {last['vendi_mean']:.2f} | {last['sources_covered_mean']:.1f} | "
            f"{last['source_entropy_mean']:.3f} | {last['noise_share_mean']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--testbed", help="a built testbed [default: a standard build found]")
    parser.add_argument("--out-dir", default=str(Path(tempfile.gettempdir()) / "bench_dq"))
    parser.add_argument("--pool-size", type=int, default=1000, help="0: the whole pool")
    parser.add_argument("--init", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument(
        "--outlier-share", type=float, default=0.05, help="left out by the '-robust' strategies"
    )
    parser.add_argument(
        "--loss-outlier-z", type=float, default=5.0,
        help="the '-filtered' strategies also leave out the base model's loss tail above this",
    )  # fmt: skip
    parser.add_argument("--epochs", type=float, help="default 10 (testbed), 1 (--real)")
    parser.add_argument("--lr", type=float, help="default 3e-3 (testbed), 1e-3 (--real)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--eval-per-family", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel processes")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (QUICK), minutes")
    parser.add_argument("--real", action="store_true", help="SmolLM2 and the real pool")
    parser.add_argument(
        "--real-work", default=str(REPO_ROOT / "runs" / "real"),
        help="where real_track.py put pool.jsonl and targets/",
    )  # fmt: skip
    args = parser.parse_args()
    kind = "real" if args.real else "testbed"
    for name, value in RECIPE[kind].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.quick:
        vars(args).update(QUICK[kind])
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.strategies = args.strategies.split(",")
    notes = []
    if args.testbed is None and not args.real:
        found = None if args.quick else standard_testbed()
        if found is None:
            from taskexpert.testbed import build_testbed

            found = Path(args.out_dir) / "micro-testbed"
            notes.append("no standard testbed build was found: ran on the micro preset")
            log(notes[-1])
            build_testbed(found, "micro", 0, progress=False)
        args.testbed = str(found)
    began = time.perf_counter()
    load_before = os.getloadavg()
    setup = prepare(args)
    log(f"pool {setup['pool_size']} of {setup['testbed_pool_size']}, eval {setup['eval_size']}")
    jobs = [(s, seed) for seed in args.seeds for s in args.strategies]
    share_base_embeddings(args, setup, jobs)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        references_f = [pool.submit(full_pool, args, setup, seed) for seed in args.seeds]
        runs_f = [pool.submit(one_run, args, setup, s, seed) for s, seed in jobs]
        runs = []
        for future in runs_f:
            runs.append(future.result())
            last = runs[-1]
            log(
                f"{last['strategy']} seed {last['seed']}: "
                + " ".join(f"{r['size']}:{r['em']:.3f}" for r in last["rounds"])
                + f" ({last['seconds']} s)"
            )
        references = [f.result() for f in references_f]
    summary = summarise(runs, references, setup, args)
    base_em = references[0]["base_em"]
    log("\n" + table(summary, base_em))
    result = {
        "setup": setup | {"notes": notes},
        "recipe": {
            k: getattr(args, k)
            for k in (
                "init",
                "per_round",
                "rounds",
                "seeds",
                "epochs",
                "lr",
                "batch_size",
                "lora_r",
                "eval_per_family",
                "max_new_tokens",
                "outlier_share",
                "loss_outlier_z",
                "threads",
                "jobs",
            )
        },  # fmt: skip
        "base_em": base_em,
        **summary,
        "runs": runs,
        "full_pool_runs": references,
        "seconds": round(time.perf_counter() - began, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
