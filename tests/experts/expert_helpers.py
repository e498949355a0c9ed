"""Helpers for the expert-selection tests: random PEFT LoRAs and in-memory adapters."""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig, get_peft_model

from taskexpert.bank import LoraAdapter, LoraModule


def save_random_lora(model, path, seed: int = 0, **config) -> None:
    """A PEFT LoRA with non-zero B (fresh ones have B = 0), saved to `path`; consumes `model`."""
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(**config))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    peft_model.save_pretrained(path)


def memory_adapter(name: str, shapes: dict[str, tuple[int, int, int]], seed: int = 0, alpha=8.0):
    """An adapter built in memory: module -> (rank, in, out), random factors."""
    generator = torch.Generator().manual_seed(seed)
    adapter = LoraAdapter(name, path=None, config={})
    for module, (rank, fan_in, fan_out) in shapes.items():
        A = torch.randn(rank, fan_in, generator=generator)
        B = torch.randn(fan_out, rank, generator=generator)
        adapter.modules[module] = LoraModule(A, B, alpha, alpha / rank)
    return adapter


def wider_model(model, hidden: int):
    """The same architecture with another hidden size: adapters for it cannot fit `model`."""
    config = copy.deepcopy(model.config)
    config.hidden_size, config.intermediate_size = hidden, 2 * hidden
    return type(model)(config)


def make_lora_bank(root, model):
    """A directory of three random LoRAs for `model` (left untouched), other targets and ranks."""
    specs = {
        "alpha": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        "beta": dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
        "gamma": dict(r=4, lora_alpha=16, target_modules=["o_proj", "up_proj"], use_rslora=True),
    }
    for seed, (name, spec) in enumerate(specs.items()):
        save_random_lora(copy.deepcopy(model), root / name, seed=seed, **spec)
    return root
