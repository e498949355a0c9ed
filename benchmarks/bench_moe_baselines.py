"""Stage 3 against its baselines on the testbed's targets (issue 5, item 5), several seeds.

Per target: the base model; the best bank adapter (picked on the test split: an oracle); a
uniform merge of the chosen experts (PEFT `add_weighted_adapter`, combination "cat": it stacks
the factors, so the merged update is exactly sum_e w_e s_e B_e A_e, unlike "linear", which
averages A and B separately); a LoraHub-style search of merge weights on the K-shot (a (1+1)
evolution strategy on K-shot loss + 0.05 * L1, gradient-free); a LoRA on the K-shot alone; a LoRA
on K-shot + selected data (`select_data` from the pool, default sentence encoder); a LoRA with as
many trainable parameters as the mixture on the same data; and the mixture itself (top-2,
top-1, top-2 with routers from K-shot hidden states, top-2 with randomly drawn bank experts).

Not run by default (name them in --methods), issue 19 item 3's mixture variants:
- moe_top2_shared: top-2 plus an always-on shared LoRA of rank --shared-rank (default 8,
  alpha twice the rank) trained beside the experts (MixLoRA, DeepSeekMoE; MoeConfig.shared_rank);
- moe_dense: dense gating, top_k = the number of chosen experts (every expert on every token,
  softmax-weighted).

Seeded methods run once per seed (LoRA and router init, data order, random experts, search
noise); deterministic ones (base, bank adapter, uniform merge) once. Prints one JSON line;
progress and a table go to stderr.

  .venv/bin/python benchmarks/bench_moe_baselines.py --testbed runs/testbed-standard
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ALL_METHODS = (
    "base",
    "best_bank_adapter",
    "uniform_merge",
    "lorahub",
    "lora_kshot",
    "lora_kshot_selected",
    "lora_param_matched",
    "moe_top2",
    "moe_top1",
    "moe_top2_kshot_router",
    "moe_random_top2",
    "moe_truth_top2",
    "moe_top2_shared",
    "moe_dense",
)
OFF_BY_DEFAULT = ("moe_top2_kshot_router", "moe_truth_top2", "moe_top2_shared", "moe_dense")
DEFAULT_METHODS = [m for m in ALL_METHODS if m not in OFF_BY_DEFAULT]
DETERMINISTIC = {"base", "best_bank_adapter", "uniform_merge"}
NOT_ADAPTERS = {"base", "kshot_lora", "ceiling_lora"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def summarise(values: list[float]) -> dict:
    return {
        "mean": round(statistics.fmean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "runs": [round(v, 4) for v in values],
    }


# --- inputs: selected data and chosen experts, cached in the work directory -----------------


def selected_data(testbed, kshot, budget: int, cache: Path):
    """K-shot guided retrieval from the testbed pool with the default sentence encoder."""
    from taskexpert.embed import EmbeddingCache, SentenceEncoder
    from taskexpert.records import load_records, write_records
    from taskexpert.selection.retrieve import select_data

    path = cache / f"selected_{budget}.jsonl"
    if path.is_file():
        return load_records(path), json.loads(path.with_suffix(".summary.json").read_text())
    pool = load_records(testbed.pool_path)
    result = select_data(pool, kshot, budget, embedder=SentenceEncoder(), cache=EmbeddingCache())
    write_records(path, result.records)
    summary = {k: v for k, v in result.summary.items() if isinstance(v, int | float | str | dict)}
    path.with_suffix(".summary.json").write_text(json.dumps(summary, default=str))
    return result.records, summary


def relevant_share(testbed, target: str, records) -> float | None:
    """Share of the selected records whose source the ground truth calls relevant."""
    sources = set(testbed.truth["targets"][target].get("relevant_sources", []))
    if not records or not sources:
        return None
    return round(sum(r.source in sources for r in records) / len(records), 4)


def chosen_experts(testbed, target: str, model, tokenizer, kshot_path, how: str, n: int, cache):
    """Stage 1's choice (select_experts, cached as experts.json) or the ground truth's experts."""
    truth = testbed.truth["targets"][target]["relevant_experts"]
    if how == "truth":
        return list(truth), "ground truth relevant_experts"
    path = cache / f"experts_n{n}.json"
    if not path.is_file():
        from taskexpert.bank import load_bank
        from taskexpert.experts.select import ExpertSelectionConfig, select_experts

        bank = load_bank(testbed.bank_dir, model)
        config = ExpertSelectionConfig(n=n, progress=False)
        selection = select_experts(model, tokenizer, bank, kshot_path, config)
        result = selection.to_json()
        result["inputs"] = {"bank": str(testbed.bank_dir), "kshot": str(kshot_path)}
        path.write_text(json.dumps(result, indent=2))
    return json.loads(path.read_text())["chosen"], f"select_experts (N={n}), {path}"


# --- models ---------------------------------------------------------------------------------


def peft_with(base, dirs: dict):
    """A copy of the base with several PEFT adapters loaded by name."""
    from peft import PeftModel

    names = list(dirs)
    model = PeftModel.from_pretrained(copy.deepcopy(base), str(dirs[names[0]]), names[0])
    for name in names[1:]:
        model.load_adapter(str(dirs[name]), adapter_name=name)
    return model.eval()


def uniform_merge(base, dirs: dict, out: Path):
    """The package's uniform merge (PEFT "cat", weights 1/N: exactly the mean update), saved
    to `out` and loaded back, as `taskexpert run` evaluates it."""
    from taskexpert.lora_baselines import uniform_merge as merge

    merge(base, list(dirs.items()), out)
    return peft_with(base, {"uniform": out})


def kshot_loss(model, tokenizer, kshot, max_length: int) -> float:
    from taskexpert.lm import mean_nll
    from taskexpert.prompts import format_prompt

    prompts = [format_prompt(r, tokenizer) for r in kshot]
    nll = mean_nll(model, tokenizer, prompts, [r.output for r in kshot], 64, max_length)
    return statistics.fmean(nll)


def lorahub_search(mixture, tokenizer, kshot, seed: int, budget: int, max_length: int):
    """Gradient-free merge weights: a (1+1)-ES on K-shot loss + 0.05 * sum|w| (LoraHub's L1),
    weights in [-1.5, 1.5] as in LoraHub. The merge is evaluated as the mixture with fixed
    gates, which is the same update as a 'cat' merge with those weights."""
    from taskexpert.moe import fixed_gates, mixture_config

    n = len(mixture_config(mixture).experts)
    rng = random.Random(seed)

    def objective(weights):
        with fixed_gates(mixture, weights):
            loss = kshot_loss(mixture, tokenizer, kshot, max_length)
        return loss + 0.05 * sum(abs(w) for w in weights)

    best = [1.0 / n] * n
    best_value = objective(best)
    sigma = 0.5
    for _ in range(budget - 1):
        trial = [min(1.5, max(-1.5, w + rng.gauss(0, sigma))) for w in best]
        value = objective(trial)
        if value < best_value:
            best, best_value, sigma = trial, value, sigma * 1.5
        else:
            sigma = max(0.02, sigma * 0.85)
    return best, best_value


def train_lora(base, tokenizer, records, r: int, target_modules, config):
    """A fresh PEFT LoRA (alpha = 2r, like the bank) trained with the shared trainer."""
    import torch
    from peft import LoraConfig, get_peft_model

    from taskexpert.train import train

    torch.manual_seed(config.seed)
    model = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(
            r=r,
            lora_alpha=2 * r,
            lora_dropout=0.0,
            target_modules=list(target_modules),
            task_type="CAUSAL_LM",
        ),
    )
    result = train(model, tokenizer, records, config)
    return model.eval(), result


def train_moe(base, tokenizer, adapters, records, kshot, config, out: Path):
    from taskexpert.moe.train import build_mixture, train_mixture

    model, _ = build_mixture(copy.deepcopy(base), tokenizer, adapters, config, kshot)
    summary = train_mixture(model, tokenizer, records, out, config)
    return model.eval(), summary


# --- one target -----------------------------------------------------------------------------


def run_target(args, testbed, target: str, base, tokenizer, work: Path) -> dict:
    from taskexpert.bank import load_adapter
    from taskexpert.evaluate import evaluate_exact_match
    from taskexpert.lora_baselines import matched_rank as rank_for
    from taskexpert.moe import attach_mixture, fixed_gates, freeze_base
    from taskexpert.moe.train import MoeTrainConfig
    from taskexpert.records import load_records
    from taskexpert.testbed.presets import get_preset
    from taskexpert.train import TrainConfig

    began = time.perf_counter()
    cache = work / target
    cache.mkdir(parents=True, exist_ok=True)
    preset = get_preset(testbed.truth["build"]["preset"])
    kshot = load_records(testbed.kshot_path(target))
    test = load_records(testbed.test_path(target))
    if args.max_test:
        test = test[: args.max_test]
    # Room for the longest K-shot output and a little more (the test split is not looked at).
    longest = max(len(tokenizer(r.output, add_special_tokens=False)["input_ids"]) for r in kshot)
    max_new_tokens = args.max_new_tokens or min(preset.max_new_tokens, int(1.25 * longest) + 4)

    def em(model) -> float:
        result = evaluate_exact_match(
            model,
            tokenizer,
            test,
            batch_size=args.eval_batch_size,
            max_new_tokens=max_new_tokens,
        )
        return result["exact_match"]

    selected, selection_summary = selected_data(testbed, kshot, args.budget, cache)
    data, _ = _merge(kshot, selected)
    names, experts_source = chosen_experts(
        testbed, target, base, tokenizer, testbed.kshot_path(target), args.experts, args.n, cache
    )
    log(f"[{target}] experts {names} ({experts_source}); {len(data)} training records")
    adapters = [load_adapter(testbed.adapter_dir(name), name=name) for name in names]
    usable = [
        name
        for name in testbed.adapter_names()
        if testbed.truth["adapters"][name]["kind"] != "foreign"
    ]
    moe_config = MoeTrainConfig(
        epochs=args.epochs,
        lr=args.moe_lr,
        router_lr=args.router_lr,
        batch_size=args.batch_size,
        micro_batch_size=args.batch_size,
        max_length=args.max_length,
        load_balancing_coef=args.lb_coef,
        shared_rank=0,  # the paper's mixture; moe_top2_shared adds the shared LoRA
        warmup_ratio=0.05,
        checkpoint_every=0,
        progress=False,
    )
    lora_config = TrainConfig(
        epochs=args.epochs,
        lr=args.lora_lr,
        batch_size=args.batch_size,
        max_length=args.max_length,
        warmup_ratio=0.05,
        progress=False,
    )
    target_modules = sorted(adapters[0].target_modules)
    bank_table = {
        k: v
        for k, v in testbed.truth.get("baselines", {}).get(target, {}).items()
        if k not in NOT_ADAPTERS and v is not None
    }
    matched_rank = None
    runs: dict[str, list[float]] = {m: [] for m in args.methods}
    details: dict[str, list] = {m: [] for m in args.methods}
    seconds: dict[str, float] = dict.fromkeys(args.methods, 0.0)

    def record(method: str, value: float, t0: float, **info) -> None:
        runs[method].append(value)
        seconds[method] += time.perf_counter() - t0
        if info:
            details[method].append(info)
        log(f"[{target}] {method:<22} {value:.3f}  ({time.perf_counter() - t0:.0f}s) {info or ''}")

    for method in [m for m in args.methods if m in DETERMINISTIC]:
        t0 = time.perf_counter()
        if method == "base":
            record(method, em(base), t0)
        elif method == "best_bank_adapter":
            if not bank_table:
                log(f"[{target}] no bank table in testbed.json; best_bank_adapter skipped")
                continue
            best = max(bank_table, key=bank_table.get)
            model = peft_with(base, {best: testbed.adapter_dir(best)})
            record(method, em(model), t0, adapter=best, testbed_em=bank_table[best])
        elif method == "uniform_merge":
            dirs = {n: testbed.adapter_dir(n) for n in names}
            model = uniform_merge(base, dirs, cache / "uniform_merge")
            record(method, em(model), t0)

    for seed in args.seeds:
        moe_seed = moe_config.model_copy(update={"seed": seed})
        lora_seed = lora_config.model_copy(update={"seed": seed})
        for method in [m for m in args.methods if m not in DETERMINISTIC]:
            t0 = time.perf_counter()
            out = cache / f"{method}_seed{seed}"
            if method == "lorahub":
                mixture = attach_mixture(copy.deepcopy(base), adapters)
                weights, value = lorahub_search(
                    mixture, tokenizer, kshot, seed, args.lorahub_budget, args.max_length
                )
                with fixed_gates(mixture, weights):
                    score = em(mixture)
                record(method, score, t0, weights=[round(w, 3) for w in weights], loss=value)
            elif method == "lora_kshot":
                config = preset.kshot_lora.model_copy(update={"seed": seed, "progress": False})
                model, _ = train_lora(base, tokenizer, kshot, preset.lora_r, target_modules, config)
                record(method, em(model), t0)
            elif method == "lora_kshot_selected":
                model, _ = train_lora(
                    base, tokenizer, data, preset.lora_r, target_modules, lora_seed
                )
                record(method, em(model), t0)
            elif method == "lora_param_matched":
                if matched_rank is None:
                    probe = attach_mixture(copy.deepcopy(base), adapters)
                    matched_rank = rank_for(base, freeze_base(probe), target_modules)
                model, _ = train_lora(
                    base, tokenizer, data, matched_rank, target_modules, lora_seed
                )
                record(method, em(model), t0, rank=matched_rank)
            elif method.startswith("moe_"):
                chosen = adapters
                config = moe_seed
                if method == "moe_top1":
                    config = config.model_copy(update={"top_k": 1})
                if method == "moe_top2_kshot_router":
                    config = config.model_copy(update={"router_init": "kshot"})
                if method == "moe_top2_shared":
                    config = config.model_copy(update={"shared_rank": args.shared_rank})
                if method == "moe_dense":
                    config = config.model_copy(update={"top_k": len(chosen)})
                if method == "moe_random_top2":
                    draw = random.Random(seed).sample(usable, len(names))
                    chosen = [load_adapter(testbed.adapter_dir(n), name=n) for n in draw]
                if method == "moe_truth_top2":
                    truth = testbed.truth["targets"][target]["relevant_experts"]
                    chosen = [load_adapter(testbed.adapter_dir(n), name=n) for n in truth]
                config = config.model_copy(update={"top_k": min(config.top_k, len(chosen))})
                model, summary = train_moe(base, tokenizer, chosen, data, kshot, config, out)
                record(
                    method,
                    em(model),
                    t0,
                    experts=[a.name for a in chosen],
                    top_k=config.top_k,
                    shared_rank=config.shared_rank,
                    trainable=summary["trainable_parameters"],
                    entropy=summary["final_router_entropy"],
                    max_entropy=summary["router_max_entropy"],
                    load=summary["final_expert_load"],
                    loss=summary["train"]["final_loss"],
                )

    methods = {}
    for method in args.methods:
        if runs[method]:
            methods[method] = {**summarise(runs[method]), "seconds": round(seconds[method], 1)}
            if details[method]:
                methods[method]["details"] = details[method]
    return {
        "experts": names,
        "experts_source": experts_source,
        "training_records": len(data),
        "selected": len(selected),
        "selected_relevant_share": relevant_share(testbed, target, selected),
        "selection": {
            k: selection_summary.get(k) for k in ("seconds", "sources") if k in selection_summary
        },
        "test_records": len(test),
        "max_new_tokens": max_new_tokens,
        "param_matched_rank": matched_rank,
        "bank_table_best": max(bank_table.items(), key=lambda kv: kv[1]) if bank_table else None,
        "methods": methods,
        "verdict": verdict(methods),
        "seconds": round(time.perf_counter() - began, 1),
    }


def prepare_target(args, testbed, target: str, base, tokenizer, work: Path) -> dict:
    """The expensive, seed-free inputs: selected data and Stage 1's experts (both cached)."""
    from taskexpert.records import load_records

    began = time.perf_counter()
    cache = work / target
    cache.mkdir(parents=True, exist_ok=True)
    kshot = load_records(testbed.kshot_path(target))
    selected, _ = selected_data(testbed, kshot, args.budget, cache)
    names, source = chosen_experts(
        testbed, target, base, tokenizer, testbed.kshot_path(target), args.experts, args.n, cache
    )
    return {
        "experts": names,
        "experts_source": source,
        "relevant_experts": testbed.truth["targets"][target]["relevant_experts"],
        "selected": len(selected),
        "selected_relevant_share": relevant_share(testbed, target, selected),
        "seconds": round(time.perf_counter() - began, 1),
    }


def _merge(kshot, selected):
    from taskexpert.moe.train import training_records

    return training_records(kshot, selected)


def verdict(methods: dict) -> dict:
    """Does the top-2 mixture beat each family of baselines on mean exact match?"""
    moe = methods.get("moe_top2", {}).get("mean")
    if moe is None:
        return {}
    groups = {
        "beats_bank_adapters": ["best_bank_adapter"],
        "beats_merges": ["uniform_merge", "lorahub"],
        "beats_param_matched_lora": ["lora_param_matched"],
        "beats_lora_same_data": ["lora_kshot_selected"],
    }
    result = {}
    for key, members in groups.items():
        others = [methods[m]["mean"] for m in members if m in methods]
        if others:
            result[key] = bool(moe > max(others))
    return result


def table(results: dict) -> str:
    lines = []
    for target, result in results.items():
        lines.append(f"\n{target}  (experts: {', '.join(result['experts'])})")
        for method, row in result["methods"].items():
            spread = f"± {row['std']:.3f}" if len(row["runs"]) > 1 else "       "
            lines.append(
                f"  {method:<24} {row['mean']:.3f} {spread}  [{row['min']:.2f}, {row['max']:.2f}]"
                f"  n={len(row['runs'])}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--testbed", required=True, type=Path, help="A finished testbed build.")
    parser.add_argument("--targets", default="two_skill", help="Names, or 'two_skill' / 'all'.")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=", ".join(ALL_METHODS))
    parser.add_argument("--experts", choices=("select", "truth"), default="select")
    parser.add_argument("--n", type=int, default=4, help="Experts chosen by select_experts.")
    parser.add_argument("--budget", type=int, default=300, help="Selected pool records.")
    parser.add_argument("--epochs", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--moe-lr", type=float, default=3e-3, help="3e-3 beat 1e-3 on the testbed")
    parser.add_argument(
        "--router-lr", type=float, default=None, help="The MoE routers' LR [default: --moe-lr]."
    )
    parser.add_argument("--lora-lr", type=float, default=3e-3)
    parser.add_argument("--lb-coef", type=float, default=0.0)
    parser.add_argument(
        "--shared-rank", type=int, default=8, help="Rank of moe_top2_shared's shared LoRA."
    )
    parser.add_argument("--lorahub-budget", type=int, default=40)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--max-test", type=int, default=0, help="Evaluate on the first N tests.")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="Default: the preset's.")
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="1 is fastest on a busy machine.")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/bench_moe_baselines"))
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="Only select the data and the experts (cached in the work dir), then stop.",
    )
    args = parser.parse_args()

    import torch

    from taskexpert.testbed import Testbed

    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    testbed = Testbed.load(args.testbed)
    if args.targets in ("two_skill", "all"):
        targets = [
            t
            for t, info in testbed.truth["targets"].items()
            if args.targets == "all" or info["kind"] == "two_skill"
        ]
    else:
        targets = args.targets.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(args.methods) - set(ALL_METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join(ALL_METHODS)}")
    base, tokenizer = testbed.load_base()
    build = testbed.truth["build"]
    # keyed by the build's content too: two builds of one preset and seed can differ (new code)
    digest = hashlib.sha256((testbed.root / "testbed.json").read_bytes()).hexdigest()[:12]
    work = args.work_dir / f"{build['preset']}-{build['seed']}-{digest}"
    if args.prepare_only:
        prepared = {t: prepare_target(args, testbed, t, base, tokenizer, work) for t in targets}
        print(json.dumps({"benchmark": "moe_baselines", "prepared": prepared}))
        return
    results = {t: run_target(args, testbed, t, base, tokenizer, work) for t in targets}
    log(table(results))
    settings = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "testbed"
    }
    print(
        json.dumps(
            {
                "benchmark": "moe_baselines",
                "testbed": str(args.testbed),
                "preset": testbed.truth["build"]["preset"],
                "recipe_current": testbed.recipe_current,
                "targets": results,
                "settings": settings,
                "threads": torch.get_num_threads(),
                "seconds": round(time.perf_counter() - began, 1),
                "load_average": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()
