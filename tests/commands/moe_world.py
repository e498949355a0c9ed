"""A tiny world on disk for the train-moe and evaluate CLI tests: base, bank, data, experts."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from tiny_models import make_char_tokenizer, make_tiny_llama


@dataclass
class World:
    root: Path
    base: Path
    bank: Path
    experts: Path
    data: Path
    kshot: Path
    test: Path


def save_lora(model, path: Path, seed: int, r: int, targets=("q_proj", "v_proj")) -> None:
    """A PEFT LoRA with non-zero B on a copy of `model`, saved as safetensors."""
    torch.manual_seed(seed)
    peft_model = get_peft_model(
        copy.deepcopy(model),
        LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), lora_dropout=0.0),
    )
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.2)
    peft_model.save_pretrained(str(path))


def records(prefix: str, n: int, with_choices: bool = False) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = i % 5, (2 * i) % 7
        row = {
            "id": f"{prefix}-{i}",
            "instruction": f"Add {a} and {b}.",
            "output": f"{a} plus {b} is {a + b}.\nThe answer is {a + b}.",
            "answer": str(a + b),
            "rationale": f"{a} plus {b} is {a + b}.",
        }
        if with_choices and i % 2 == 0:
            options = [str(a + b), str(a + b + 1), str(a + b + 2)]
            row["instruction"] += "\nA) " + "\nB) ".join(options[:2]) + "\nC) " + options[2]
            row["answer"], row["choices"] = "A", options
            row["output"] = f"{a} plus {b} is {a + b}.\nThe answer is A."
        rows.append(row)
    return rows


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def build_world(root: Path) -> World:
    tokenizer = make_char_tokenizer()
    model = make_tiny_llama(len(tokenizer), hidden=32, layers=2)
    base = root / "base"
    model.save_pretrained(str(base), safe_serialization=True)
    tokenizer.save_pretrained(str(base))
    bank = root / "bank"
    save_lora(model, bank / "e0", seed=0, r=4)
    save_lora(model, bank / "e1", seed=1, r=2)
    save_lora(model, bank / "e2", seed=2, r=4)
    save_lora(model, bank / "other_modules", seed=3, r=4, targets=("k_proj",))
    wide = make_tiny_llama(len(tokenizer), hidden=48, layers=2)
    save_lora(wide, bank / "foreign", seed=4, r=4)
    experts = root / "experts.json"
    experts.write_text(json.dumps({"chosen": ["e0", "e1", "e2"], "inputs": {"bank": str(bank)}}))
    return World(
        root=root,
        base=base,
        bank=bank,
        experts=experts,
        data=jsonl(root / "data.jsonl", records("d", 8)),
        kshot=jsonl(root / "kshot.jsonl", records("k", 4)),
        test=jsonl(root / "test.jsonl", records("t", 4, with_choices=True)),
    )
