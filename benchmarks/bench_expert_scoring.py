"""Expert-scoring cost: seconds per adapter against bank size, and what batching buys.

Stage 1 must cost about (bank size) x (one batched pass over the K-shot), with the base model
loaded once and adapters swapped in from memory. This scores banks of growing size on a K-shot
set and reports seconds per adapter (switch + EM generation + RPPL/PPL forward), the same for
batch size 1 (what a per-example loop costs), and the one-off similarity matrix.

By default it runs on a random tiny Llama (hidden 128, 2 layers, character tokenizer) with
random LoRAs (r=8 on every projection); `--testbed DIR` uses the testbed's base model, bank
and a target's K-shot instead, with bank sizes capped at the bank.

    .venv/bin/python benchmarks/bench_expert_scoring.py [--sizes 4 8 16] [--kshot 50]

Prints one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path

import torch

from taskexpert.bank import load_bank
from taskexpert.experts.diversity import similarity_matrix
from taskexpert.experts.scoring import BASE_ROW, ScoringConfig, prepare_kshot, score_bank
from taskexpert.records import Record, load_records

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def char_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + list(string.printable))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        unk_token="<unk>",
    )  # fmt: skip


def tiny_llama(vocab_size: int, hidden: int, layers: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def random_bank(root: Path, count: int, vocab_size: int, hidden: int, layers: int) -> Path:
    from peft import LoraConfig, get_peft_model

    for i in range(count):
        model = get_peft_model(
            tiny_llama(vocab_size, hidden, layers),
            LoraConfig(r=8, lora_alpha=16, target_modules=PROJECTIONS),
        )
        torch.manual_seed(100 + i)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.05)
        model.save_pretrained(root / f"adapter{i:03d}")
    return root


def synthetic_kshot(k: int) -> list[Record]:
    """Arithmetic questions with a short worked rationale, like the testbed's families."""
    records = []
    for i in range(k):
        a, b = 10 + 7 * i % 80, 3 + 5 * i % 60
        rationale = f"{a % 10} plus {b % 10} is {a % 10 + b % 10}. Then the tens: {a + b}."
        records.append(
            Record(
                id=f"k{i}",
                instruction=f"What is {a} plus {b}?",
                output=f"{rationale}\nThe answer is {a + b}.",
                answer=str(a + b),
                rationale=rationale,
            )
        )
    return records


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    if args.testbed:
        from taskexpert.testbed.layout import Testbed

        testbed = Testbed.load(args.testbed)
        base, tokenizer = testbed.load_base()
        bank_dir = testbed.bank_dir
        target = testbed.targets[0]
        kshot = load_records(testbed.kshot_path(target))[: args.kshot]
        setting = {
            "model": f"testbed ({testbed.truth['build']['preset']})",
            "target": target,
        }
    else:
        tokenizer = char_tokenizer()
        base = tiny_llama(len(tokenizer), args.hidden, args.layers)
        log(f"building {max(args.sizes)} random adapters ...")
        bank_dir = random_bank(
            Path(tmp.name), max(args.sizes), len(tokenizer), args.hidden, args.layers
        )
        kshot = synthetic_kshot(args.kshot)
        setting = {"model": f"random tiny llama h{args.hidden} l{args.layers}", "lora": "r8 all"}
    start = time.perf_counter()
    full_bank = load_bank(bank_dir, base)
    load_seconds = time.perf_counter() - start
    sizes = [s for s in args.sizes if s <= len(full_bank)]
    config = ScoringConfig(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    task = prepare_kshot(kshot, tokenizer, config)
    rows = []
    for size in sizes:
        names = full_bank.names[:size]
        adapters = {n: full_bank.adapters[n] for n in names}
        start = time.perf_counter()
        similarity_matrix(adapters)
        sim_seconds = time.perf_counter() - start
        start = time.perf_counter()
        scores = score_bank(base, tokenizer, adapters, task, config, progress=False)
        total = time.perf_counter() - start
        per_adapter = [scores[n].seconds for n in names]
        rows.append(
            {
                "bank_size": size,
                "total_seconds": round(total, 3),
                "base_row_seconds": round(scores[BASE_ROW].seconds, 3),
                "seconds_per_adapter_median": round(statistics.median(per_adapter), 3),
                "seconds_per_adapter_mean": round(statistics.mean(per_adapter), 3),
                "similarity_seconds": round(sim_seconds, 4),
            }
        )
        log(f"bank {size}: {rows[-1]}")
    # the same work one example at a time, on two adapters: what batching saves
    few = {n: full_bank.adapters[n] for n in full_bank.names[:2]}
    unbatched_config = ScoringConfig(batch_size=1, max_new_tokens=args.max_new_tokens)
    unbatched = score_bank(
        base, tokenizer, few, task, unbatched_config, include_base=False, progress=False
    )
    per_adapter_unbatched = statistics.mean(s.seconds for s in unbatched.values())
    tmp.cleanup()
    return {
        "benchmark": "expert_scoring",
        **setting,
        "kshot": len(task),
        "max_new_tokens": task.max_new_tokens,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "bank_load_seconds": round(load_seconds, 3),
        "rows": rows,
        "seconds_per_adapter_batch1": round(per_adapter_unbatched, 3),
        "batching_speedup": round(per_adapter_unbatched / rows[0]["seconds_per_adapter_mean"], 2)
        if rows
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--kshot", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--testbed", type=Path, default=None, help="a built testbed directory")
    print(json.dumps(run(parser.parse_args())))


if __name__ == "__main__":
    main()
