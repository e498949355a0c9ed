"""Expert-scoring cost: seconds per adapter, the multi-adapter path against the reference.

Stage 1 scores every adapter of a bank on the K-shot (EM from greedy generation, RPPL and PPL
from a masked NLL pass), the base model loaded once. This scores one bank twice in one
process: the default path (`adapters_per_batch` adapters in shared batches,
experts/multi_lora.py) and the reference path (adapters_per_batch=1: one adapter at a time
through PEFT), and reports both paths' seconds per adapter (switching included), their ratio,
and how far their scores are apart (max |NLL| difference, generations that differ).

Bases: `--base tiny` (default; a random tiny Llama, hidden 128, 2 layers, character
tokenizer, random r8 LoRAs on every projection), `--base smollm2` (SmolLM2-135M-Instruct as
taskexpert.models loads it, random r8 q/v LoRAs), `--testbed DIR` (the testbed's base, bank
and first target's K-shot), or `--bank DIR` for a real bank on the chosen base.
`--bank-size N` grows the bank to N by re-using its adapters under new names (each is scored
in full, so the cost is honest); `--reference-size` scores only the first adapters on the
reference path when that path is too slow for the whole bank (seconds per adapter do not
depend on bank size there).

    .venv/bin/python benchmarks/bench_expert_scoring.py --bank-size 16 --kshot 50
    .venv/bin/python benchmarks/bench_expert_scoring.py --testbed DIR --bank-size 100
    .venv/bin/python benchmarks/bench_expert_scoring.py --base smollm2 --bank-size 16

Prints one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from taskexpert.bank import load_bank
from taskexpert.experts.scoring import ScoringConfig, prepare_kshot, score_bank
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


def random_bank(root: Path, base, count: int, rank: int, targets: list[str]) -> Path:
    """`count` PEFT LoRAs on copies of `base` with random (non-zero) B, saved under `root`."""
    import copy

    from peft import LoraConfig, get_peft_model

    for i in range(count):
        model = get_peft_model(
            copy.deepcopy(base), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets)
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


def grown(adapters: dict, size: int) -> dict:
    """`size` adapters from the bank's, cycling through them under new names."""
    names = list(adapters)
    return {
        (names[i] if i < len(names) else f"{names[i % len(names)]}~{i}"): adapters[
            names[i % len(names)]
        ]
        for i in range(size)
    }


def setup(args, tmp: Path):
    """(base, tokenizer, bank directory or None, K-shot records, setting fields)."""
    if args.testbed:
        from taskexpert.testbed.layout import Testbed

        testbed = Testbed.load(args.testbed)
        base, tokenizer = testbed.load_base()
        target = testbed.targets[0]
        kshot = load_records(testbed.kshot_path(target))[: args.kshot]
        preset = testbed.truth["build"]["preset"]
        return (
            base,
            tokenizer,
            testbed.bank_dir,
            kshot,
            {"model": f"testbed ({preset})", "target": target},
        )
    if args.base == "smollm2":
        from taskexpert.models import load_base

        base, tokenizer = load_base("smollm2", progress=False)
        setting = {"model": "SmolLM2-135M-Instruct", "lora": f"r{args.rank} q_proj v_proj"}
        if args.bank is None:
            log(f"building {args.random_adapters} random adapters ...")
            random_bank(tmp, base, args.random_adapters, args.rank, ["q_proj", "v_proj"])
    else:
        tokenizer = char_tokenizer()
        base = tiny_llama(len(tokenizer), args.hidden, args.layers)
        setting = {
            "model": f"random tiny llama h{args.hidden} l{args.layers}",
            "lora": f"r{args.rank} all",
        }
        if args.bank is None:
            log(f"building {args.random_adapters} random adapters ...")
            random_bank(tmp, base, args.random_adapters, args.rank, PROJECTIONS)
    if args.bank is not None:
        setting["lora"] = str(args.bank)
    return base, tokenizer, args.bank or tmp, synthetic_kshot(args.kshot), setting


def timed_scores(base, tokenizer, adapters: dict, task, config) -> tuple[dict, float]:
    start = time.perf_counter()
    scores = score_bank(base, tokenizer, adapters, task, config, include_base=False, progress=False)
    return scores, time.perf_counter() - start


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    base, tokenizer, bank_dir, kshot, setting = setup(args, Path(tmp.name))
    start = time.perf_counter()
    bank = load_bank(bank_dir, base)
    load_seconds = time.perf_counter() - start
    adapters = grown(bank.adapters, args.bank_size)
    config = ScoringConfig(
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        adapters_per_batch=args.adapters_per_batch,
    )
    reference_config = replace(config, adapters_per_batch=1, share_prompt=False)
    task = prepare_kshot(kshot, tokenizer, config)
    log(f"{len(adapters)} adapters, K-shot {len(task)}, {task.max_new_tokens} new tokens")
    fast, fast_seconds = timed_scores(base, tokenizer, adapters, task, config)
    log(f"multi-adapter path: {fast_seconds:.1f} s")
    some = dict(list(adapters.items())[: args.reference_size or len(adapters)])
    reference, reference_seconds = timed_scores(base, tokenizer, some, task, reference_config)
    log(f"reference path ({len(some)} adapters): {reference_seconds:.1f} s")
    tmp.cleanup()
    nll_gap = max(
        abs(a - b)
        for name in some
        for a, b in zip(
            fast[name].rationale_nll + fast[name].answer_nll,
            reference[name].rationale_nll + reference[name].answer_nll,
            strict=True,
        )
    )
    differing = sum(
        a != b for name in some for a, b in zip(fast[name].generations, reference[name].generations)
    )
    per_adapter = fast_seconds / len(adapters)
    per_adapter_reference = reference_seconds / len(some)
    return {
        "benchmark": "expert_scoring",
        **setting,
        "kshot": len(task),
        "max_new_tokens": task.max_new_tokens,
        "batch_size": args.batch_size,
        "adapters_per_batch": args.adapters_per_batch,
        "threads": args.threads,
        "bank_load_seconds": round(load_seconds, 3),
        "bank_size": len(adapters),
        "total_seconds": round(fast_seconds, 2),
        "seconds_per_adapter": round(per_adapter, 4),
        "reference_adapters": len(some),
        "reference_seconds_per_adapter": round(per_adapter_reference, 4),
        "speedup": round(per_adapter_reference / per_adapter, 2),
        "max_nll_difference": float(f"{nll_gap:.3g}"),
        "generations_differing": f"{differing}/{len(some) * len(task)}",
        "em_equal": all(fast[n].em == reference[n].em for n in some),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--testbed", type=Path, default=None, help="a built testbed directory")
    parser.add_argument("--bank", type=Path, default=None, help="an adapter bank directory")
    parser.add_argument("--bank-size", type=int, default=16)
    parser.add_argument("--random-adapters", type=int, default=8, help="distinct random LoRAs")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--reference-size", type=int, default=None, help="default: the bank")
    parser.add_argument("--kshot", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--adapters-per-batch", type=int, default=ScoringConfig.adapters_per_batch)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    print(json.dumps(run(parser.parse_args())))


if __name__ == "__main__":
    main()
