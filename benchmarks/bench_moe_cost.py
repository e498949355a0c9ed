"""Cost of the mixture of LoRA experts against one PEFT LoRA, side by side in one process.

Issue 20 item 3: prefill and decode of the mixture (N=4 experts, top-k=2) at most 1.3x a single
LoRA's time. The base model is a random tiny Llama (`--base tiny`, hidden 256 by default) or
any causal LM (`--base smollm2`, or a model directory); the LoRA and every expert are random
PEFT LoRAs (rank 8, non-zero B) on all seven projections. Configurations, timed in each round
one after the other so background load hits them alike:
- prefill: one forward over a [batch, length] batch;
- decode: greedy `generate` with the KV cache, `--new-tokens` tokens after a short prompt, at
  each batch size of `--decode-batches`.
Each round gives a mixture/LoRA time ratio per measure (paired: the two ran seconds apart);
the JSON reports the median ratio and its spread (min, max) over the rounds, and the median
seconds. CPU time with torch.set_num_threads(`--threads`, default 1) so other processes matter
less. `--crossover` instead times one mixture layer's forward against the token count in the
dense and the grouped path (moe/layer.py GROUPED_MIN_TOKENS, GROUPED_MIN_SKIPPED).

    .venv/bin/python benchmarks/bench_moe_cost.py [--base tiny|smollm2|DIR] [--rounds 7]
        [--shared-rank 8]   # the mixture with an always-on shared LoRA (MoeConfig.shared_rank)
    .venv/bin/python benchmarks/bench_moe_cost.py --crossover [--hidden 576]

Prints one JSON line on stdout; progress goes to stderr. (Replaces bench_moe_speed.py.)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from taskexpert.bank import load_adapter
from taskexpert.moe import MoeConfig, attach_mixture
from taskexpert.moe import layer as moe_layer

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGET_RATIO = 1.3


def tiny_llama(hidden: int, layers: int, vocab: int):
    """A random Llama of the testbed's shape family (head dim 64, MLP 8/3 of hidden)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    heads = max(hidden // 64, 1)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def load_base_model(args):
    """(model, description) for --base."""
    if args.base == "tiny":
        model = tiny_llama(args.hidden, args.layers, args.vocab)
        return model, {"base": "tiny", "hidden": args.hidden, "layers": args.layers}
    from taskexpert.models import load_base

    model, _ = load_base(args.base, device="cpu", progress=False)
    config = model.config
    return model, {
        "base": args.base,
        "hidden": config.hidden_size,
        "layers": config.num_hidden_layers,
    }


def random_lora(base, rank: int, seed: int, path: Path | None = None):
    """A PEFT LoRA with non-zero B on a copy of `base`; saved to `path` when given."""
    torch.manual_seed(seed)
    model = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS)
    )
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    if path is not None:
        model.save_pretrained(path)
    return model.eval()


@torch.no_grad()
def time_prefill(model, input_ids) -> float:
    mask = torch.ones_like(input_ids)
    start = time.process_time()
    model(input_ids=input_ids, attention_mask=mask)
    return time.process_time() - start


@torch.no_grad()
def time_decode(model, prompt, new_tokens: int) -> float:
    start = time.process_time()
    model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
    )
    return time.process_time() - start


def spread(values: list[float]) -> dict:
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def run_models(args) -> dict:
    base, description = load_base_model(args)
    lora = random_lora(base, args.rank, seed=100)
    with tempfile.TemporaryDirectory() as tmp:
        adapters = []
        for e in range(args.experts):
            random_lora(base, args.rank, seed=e, path=Path(tmp) / f"expert{e}")
            adapters.append(load_adapter(Path(tmp) / f"expert{e}"))
    config = MoeConfig(top_k=args.top_k, shared_rank=args.shared_rank)
    moe = attach_mixture(copy.deepcopy(base), adapters, config).eval()
    models = {"base": base, "lora": lora, "moe": moe}

    vocab = base.config.vocab_size
    generator = torch.Generator().manual_seed(1)
    prefill_ids = torch.randint(
        3, vocab, (args.prefill_batch, args.prefill_length), generator=generator
    )
    prompts = {
        b: torch.randint(3, vocab, (b, args.prompt_length), generator=generator)
        for b in args.decode_batches
    }
    measures = ["prefill"] + [f"decode_b{b}" for b in args.decode_batches]
    times = {m: {name: [] for name in models} for m in measures}
    for round_ in range(args.rounds + 1):  # round 0 warms up (and builds the caches)
        print(f"round {round_}/{args.rounds}", file=sys.stderr)
        for name, model in models.items():
            p = time_prefill(model, prefill_ids)
            d = {b: time_decode(model, prompts[b], args.new_tokens) for b in args.decode_batches}
            if round_:
                times["prefill"][name].append(p)
                for b in args.decode_batches:
                    times[f"decode_b{b}"][name].append(d[b])
    ratios = {
        m: spread([mo / lo for mo, lo in zip(times[m]["moe"], times[m]["lora"])]) for m in measures
    }
    return {
        "benchmark": "moe_cost",
        "model": description,
        "lora_rank": args.rank,
        "targets": TARGETS,
        "experts": args.experts,
        "top_k": args.top_k,
        "shared_rank": args.shared_rank,
        "threads": args.threads,
        "rounds": args.rounds,
        "prefill_tokens": args.prefill_batch * args.prefill_length,
        "decode": {"prompt": args.prompt_length, "new_tokens": args.new_tokens},
        "grouped_min_tokens": getattr(moe_layer, "GROUPED_MIN_TOKENS", None),
        # CPU seconds per measure and configuration, median over rounds
        "seconds": {
            m: {n: round(statistics.median(t), 4) for n, t in times[m].items()} for m in measures
        },
        "lora_over_base": {
            m: round(statistics.median(times[m]["lora"]) / statistics.median(times[m]["base"]), 3)
            for m in measures
        },
        # mixture time / LoRA time, per round; the target is at most TARGET_RATIO
        "moe_over_lora": ratios,
        "target": TARGET_RATIO,
        "met": all(r["median"] <= TARGET_RATIO for r in ratios.values()),
    }


@torch.no_grad()
def run_crossover(args) -> dict:
    """One mixture layer (hidden -> 8/3 hidden) forward at growing token counts, both paths."""
    torch.manual_seed(0)
    hidden, out = args.hidden, args.hidden * 8 // 3
    base = torch.nn.Linear(hidden, out, bias=False).requires_grad_(False)
    experts = [
        (torch.randn(args.rank, hidden), torch.randn(out, args.rank) * 0.02, 2.0)
        for _ in range(args.experts)
    ]
    layer = moe_layer.MixtureOfLoraLinear(base, experts, top_k=args.top_k).eval()
    torch.nn.init.normal_(layer.router.weight, std=0.1)
    saved = moe_layer.GROUPED_MIN_TOKENS
    rows = []
    try:
        for tokens in args.crossover_tokens:
            x = torch.randn(tokens, hidden)
            repeats = max(20, 20000 // tokens)
            row = {"tokens": tokens}
            for path, grouped in (("dense", False), ("grouped", True)):
                layer._groups, moe_layer.GROUPED_MIN_TOKENS = grouped, 0
                layer(x)
                samples = []
                for _ in range(args.rounds):
                    start = time.process_time()
                    for _ in range(repeats):
                        layer(x)
                    samples.append((time.process_time() - start) / repeats * 1e6)
                row[f"{path}_us"] = round(statistics.median(samples), 1)
            rows.append(row)
    finally:
        moe_layer.GROUPED_MIN_TOKENS = saved
    return {
        "benchmark": "moe_cost_crossover",
        "layer": {"in": hidden, "out": out, "rank": args.rank},
        "experts": args.experts,
        "top_k": args.top_k,
        "threads": args.threads,
        "grouped_min_tokens": saved,
        "grouped_min_skipped": moe_layer.GROUPED_MIN_SKIPPED,
        "forward_us": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="tiny", help="tiny (random Llama), smollm2, or a dir")
    parser.add_argument("--hidden", type=int, default=256, help="tiny base / crossover layer")
    parser.add_argument("--layers", type=int, default=4, help="tiny base")
    parser.add_argument("--vocab", type=int, default=512, help="tiny base")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument(
        "--shared-rank", type=int, default=0, help="an always-on shared LoRA of this rank"
    )
    parser.add_argument("--prefill-batch", type=int, default=8)
    parser.add_argument("--prefill-length", type=int, default=128)
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--decode-batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (be considerate)")
    parser.add_argument("--crossover", action="store_true", help="time one layer's two paths")
    parser.add_argument(
        "--crossover-tokens", type=int, nargs="+", default=[1, 8, 16, 32, 64, 128, 256, 1024]
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run_crossover(args) if args.crossover else run_models(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
