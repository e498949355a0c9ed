"""Inference speed of the mixture of LoRA experts vs one PEFT LoRA vs the bare base, one run.

A random tiny Llama (hidden 256 by default) gets LoRAs on every projection; the mixture has
N=4 experts with top-2 routing (and, for contrast, top-4 = every expert on every token).
Prefill = one forward over a padded batch; decode = greedy generation with the KV cache.
Configurations are timed in interleaved rounds so background load hits them alike; the
median round counts. Prints one JSON line; progress goes to stderr.

    .venv/bin/python benchmarks/bench_moe_speed.py [--hidden 256] [--threads 1]
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
from transformers import LlamaConfig, LlamaForCausalLM

from taskexpert.bank import load_adapter
from taskexpert.moe import MoeConfig, attach_mixture

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama(hidden: int, layers: int, vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    heads = max(hidden // 64, 1)
    kv_heads = max(d for d in range(1, heads + 1) if heads % d == 0 and d <= max(heads // 2, 1))
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=1024,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


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
def time_prefill(model, input_ids, attention_mask) -> float:
    start = time.perf_counter()
    model(input_ids=input_ids, attention_mask=attention_mask)
    return time.perf_counter() - start


@torch.no_grad()
def time_decode(model, input_ids, new_tokens: int) -> float:
    start = time.perf_counter()
    model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (be considerate)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    base = tiny_llama(args.hidden, args.layers, args.vocab)
    lora = random_lora(base, args.rank, seed=100)
    with tempfile.TemporaryDirectory() as tmp:
        adapters = []
        for e in range(args.experts):
            random_lora(base, args.rank, seed=e, path=Path(tmp) / f"expert{e}")
            adapters.append(load_adapter(Path(tmp) / f"expert{e}"))
    moe = attach_mixture(copy.deepcopy(base), adapters, MoeConfig(top_k=args.top_k)).eval()
    dense = attach_mixture(copy.deepcopy(base), adapters, MoeConfig(top_k=args.experts)).eval()
    models = {"base": base, "lora": lora, "moe": moe, f"moe_top{args.experts}": dense}

    torch.manual_seed(1)
    input_ids = torch.randint(3, args.vocab, (args.batch, args.seq))
    attention_mask = torch.ones_like(input_ids)
    prompt = input_ids[:, :16]
    prefill = {name: [] for name in models}
    decode = {name: [] for name in models}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        print(f"round {round_}/{args.rounds}", file=sys.stderr)
        for name, model in models.items():
            p = time_prefill(model, input_ids, attention_mask)
            d = time_decode(model, prompt, args.new_tokens)
            if round_:
                prefill[name].append(p)
                decode[name].append(d)

    def tokens_per_s(times: list[float], tokens: int) -> float:
        return round(tokens / statistics.median(times), 1)

    prefill_tps = {n: tokens_per_s(t, args.batch * args.seq) for n, t in prefill.items()}
    decode_tps = {n: tokens_per_s(t, args.batch * args.new_tokens) for n, t in decode.items()}
    result = {
        "benchmark": "moe_speed",
        "model": {"hidden": args.hidden, "layers": args.layers, "vocab": args.vocab},
        "lora": {"rank": args.rank, "targets": TARGETS},
        "experts": args.experts,
        "top_k": args.top_k,
        "threads": args.threads,
        "prefill_tokens": args.batch * args.seq,
        "prefill_tokens_per_s": prefill_tps,
        "decode_tokens_per_s": decode_tps,
        # Cost of the mixture relative to one LoRA (time ratio); the target is <= 1.5.
        "moe_over_lora_prefill": round(prefill_tps["lora"] / prefill_tps["moe"], 3),
        "moe_over_lora_decode": round(decode_tps["lora"] / decode_tps["moe"], 3),
        "target": 1.5,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
