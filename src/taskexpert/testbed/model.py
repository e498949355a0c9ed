"""The testbed's base model: a tiny `LlamaForCausalLM`, pretrained on the easy level of every
family with the shared trainer (full-model SFT, loss on responses only).

Llama architecture on purpose: the same classes, PEFT target modules (q/k/v/o/gate/up/down)
and loading code serve SmolLM2 or a 7B model, so nothing downstream special-cases the testbed.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

LORA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ModelSpec(BaseModel):
    """Shape of the tiny Llama; head count must divide the hidden size."""

    model_config = ConfigDict(extra="forbid")

    hidden: int = Field(160, gt=0)
    layers: int = Field(3, gt=0)
    heads: int = Field(4, gt=0)
    intermediate: int | None = Field(None, description="MLP width; None: 8/3 of hidden")
    max_positions: int = Field(256, gt=0)


def llama_config(spec: ModelSpec, tokenizer):
    """A LlamaConfig for the spec, wired to the tokenizer's special tokens."""
    from transformers import LlamaConfig

    if spec.hidden % spec.heads:
        raise ValueError(f"hidden {spec.hidden} is not divisible by heads {spec.heads}")
    intermediate = spec.intermediate or (spec.hidden * 8 // 3 + 7) // 8 * 8
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def build_attention() -> str:
    """The attention kernel the build trains with: eager on CPU, SDPA on a GPU.

    Measured on the standard model (head dim 40, about 80 tokens a record) with bf16 autocast
    on this 2-core CPU: a LoRA step takes 0.061 s eager against 0.090 s with SDPA, whose CPU
    flash-attention backward was a third of the step; a full-model step 0.057 s against 0.085.
    The kernel is not saved with the model, so loaders elsewhere keep their own default.
    """
    from taskexpert.runtime import resolve_device

    return "sdpa" if resolve_device() == "cuda" else "eager"


def make_base_model(spec: ModelSpec, tokenizer, seed: int = 0, attention: str = "sdpa"):
    """A freshly initialised tiny Llama (deterministic per seed)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(spec, tokenizer))
    model.set_attn_implementation(attention)
    return model


def load_built_base(directory: Path):
    """The built base model (in eval mode) and its tokenizer, with the build's attention."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    model = AutoModelForCausalLM.from_pretrained(
        str(directory), attn_implementation=build_attention()
    )
    return model.eval(), tokenizer


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
