"""Builders for a tiny random Llama with a character tokenizer, made offline in a second.

Importable from any test (`from tiny_models import make_tiny_llama`): pytest puts tests/ on
sys.path through tests/conftest.py, and a module named `conftest` would be ambiguous.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def make_char_tokenizer() -> PreTrainedTokenizerFast:
    alphabet = list(string.printable)
    vocab = {tok: i for i, tok in enumerate(SPECIALS + alphabet)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    return tokenizer


def make_tiny_llama(vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 2):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def save_tiny_base(directory: Path, **sizes) -> Path:
    """A tiny Llama and the character tokenizer saved as one base-model directory."""
    tokenizer = make_char_tokenizer()
    make_tiny_llama(len(tokenizer), **sizes).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def random_lora(base, out, seed, r=4, alpha=8, targets=("q_proj", "v_proj"), **extra):
    """A saved PEFT LoRA with non-zero B (a fresh one has B = 0 and changes nothing)."""
    from taskexpert.peft_glue import fresh_lora, lora_config, save_lora

    config = lora_config(r, alpha, targets)
    for key, value in extra.items():
        setattr(config, key, value)
    model = fresh_lora(base, config, seed=seed, base_name="tiny")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    save_lora(model, out)
    return out
