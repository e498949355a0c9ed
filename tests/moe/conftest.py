"""Random PEFT LoRA experts on copies of the tiny Llama, saved and read back through the bank."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from taskexpert.bank import load_adapter


def save_random_lora(model, path, seed=0, **config):
    """A PEFT LoRA with non-zero B (fresh LoRAs have B = 0) on a copy of `model`, saved."""
    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(**config))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    peft_model.save_pretrained(path)
    return peft_model.eval()


def variant_of(model, seed=1, **overrides):
    """Another random base of the same family (other seed, or other sizes via overrides)."""
    from transformers import LlamaForCausalLM

    config = copy.deepcopy(model.config)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@pytest.fixture()
def make_experts(tiny_llama, tmp_path):
    """make_experts(ranks, targets=...) -> adapters read by bank.load_adapter, one per rank."""

    def make(ranks, target_modules=("q_proj", "v_proj"), **config):
        adapters = []
        for i, rank in enumerate(ranks):
            path = tmp_path / f"expert{i}"
            save_random_lora(
                tiny_llama,
                path,
                seed=i,
                r=rank,
                lora_alpha=2 * rank + i,
                target_modules=list(target_modules),
                **config,
            )
            adapters.append(load_adapter(path))
        return adapters

    return make


@pytest.fixture()
def input_ids(char_tokenizer):
    texts = ["Route me to the right expert.", "2 + 2 = 4, so the answer is 4."]
    batch = char_tokenizer(texts, padding=True, return_tensors="pt")
    return batch["input_ids"]
