"""The LoRA baselines a mixture of experts has to beat, built the way a user would build them.

The best bank adapter is picked on the K-shot (never on the test split: that would be an
oracle); the uniform merge is the plain average of the chosen experts' updates; the plain
and parameter-matched LoRAs are fresh LoRAs trained with the shared trainer on the same data
as the mixture. Every trained or merged adapter is written as an ordinary PEFT directory
(atomically), so it is evaluated through exactly the code path the mixture's users get.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from taskexpert.errors import InputError
from taskexpert.io import atomic_dir, atomic_open

if TYPE_CHECKING:
    import torch

    from taskexpert.artifacts import ExpertsDocument
    from taskexpert.records import Record
    from taskexpert.train import TrainConfig

MERGED = "default"  # PEFT saves its "default" adapter at the top of the directory


def _as_float(value) -> float:
    return math.inf if value == "inf" else float(value)


def best_adapter(experts: ExpertsDocument) -> str:
    """The bank adapter a user would pick from experts.json: the highest K-shot exact match,
    ties broken by the lower reasoning perplexity; the base-model row and rejected adapters
    are not candidates."""
    from taskexpert.experts.scoring import BASE_ROW

    rejected = set(experts.rejected or {})
    rows = {
        name: row
        for name, row in (experts.scores or {}).items()
        if name != BASE_ROW and name not in rejected
    }
    if not rows:
        raise InputError(
            "experts.json has no adapter scores to pick the best bank adapter from "
            "(run select-experts, which writes them)",
            field="scores",
        )
    return min(rows, key=lambda name: (-rows[name].em, _as_float(rows[name].rppl)))


def uniform_merge(
    model: torch.nn.Module, adapters: Sequence[tuple[str, Path]], out_dir: Path
) -> Path:
    """Save, as one PEFT adapter, the uniform merge of `adapters` ((name, directory) pairs).

    Combination "cat" stacks the factors, so the merged update is exactly the mean of the
    adapters' updates (1/n sum s_i B_i A_i); "linear" would average A and B separately, which
    is not. `model` gets the adapters only while merging and is handed back unchanged.
    """
    from peft import PeftModel

    if not adapters:
        raise InputError("no adapters to merge")
    out_dir = Path(out_dir)
    slots = [f"merge{i}" for i in range(len(adapters))]  # user names may hold dots
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    training = model.training
    peft_model = None
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapters[0][1]), adapter_name=slots[0])
        for slot, (_, path) in zip(slots[1:], adapters[1:]):
            peft_model.load_adapter(str(path), adapter_name=slot)
        weights = [1.0 / len(adapters)] * len(adapters)
        peft_model.add_weighted_adapter(slots, weights, MERGED, combination_type="cat")
        peft_model.set_adapter(MERGED)
        for slot in slots:
            peft_model.delete_adapter(slot)
        # "cat" folds each adapter's scaling into its factors and sets alpha = r; with rsLoRA
        # left on, a loader would scale the merge again by sqrt(r)
        config = peft_model.peft_config[MERGED]
        config.use_rslora = False
        config.inference_mode = True
        with atomic_dir(out_dir) as tmp:
            peft_model.save_pretrained(
                str(tmp),
                selected_adapters=[MERGED],
                safe_serialization=True,
                save_embedding_layers=False,
            )
    finally:
        if peft_model is not None:
            peft_model.unload()
        for name, param in model.named_parameters():
            param.requires_grad_(grads.get(name, param.requires_grad))
        model.train(training)
    return out_dir


def _lora_modules(model: torch.nn.Module, targets: str | Sequence[str]) -> dict[str, int]:
    """in + out features of every module PEFT would put a LoRA on for `targets`."""
    from peft.tuners.tuners_utils import (
        _maybe_include_all_linear_layers,
        check_target_module_exists,
    )

    from taskexpert.peft_glue import lora_config

    config = lora_config(1, 1, targets)
    if isinstance(config.target_modules, str) and config.target_modules.lower() == "all-linear":
        config = _maybe_include_all_linear_layers(config, model)
    found = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if weight is None or weight.dim() != 2 or not check_target_module_exists(config, name):
            continue
        found[name] = int(weight.shape[0] + weight.shape[1])
    return found


def lora_trainable_params(model: torch.nn.Module, rank: int, targets: str | Sequence[str]) -> int:
    """Trainable parameters of a rank-`rank` LoRA on `targets`: r * (in + out) per module."""
    return rank * sum(_lora_modules(model, targets).values())


def matched_rank(model: torch.nn.Module, target_params: int, targets: str | Sequence[str]) -> int:
    """The LoRA rank on `targets` whose trainable parameter count is closest to
    `target_params` (e.g. a mixture's), at least 1: the fair "same budget" baseline."""
    per_rank = sum(_lora_modules(model, targets).values())
    if per_rank == 0:
        raise InputError(f"no module of the model matches the LoRA targets {targets!r}")
    return max(1, round(target_params / per_rank))


def train_lora(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Record],
    out_dir: Path,
    *,
    rank: int,
    alpha: float,
    targets: str | Sequence[str],
    train: TrainConfig,
    log: Path | None = None,
) -> dict:
    """Train a fresh LoRA (seeded by `train.seed`) on a copy of `model` and save it atomically
    as a PEFT adapter in `out_dir`; returns what the manifest records about it. `log` gets a
    train_log.jsonl ({"step", "loss", "lr"} every `train.log_every` steps, like the mixture's)
    so the run report can draw the baselines' curves beside the mixture's."""
    from taskexpert import peft_glue
    from taskexpert.train import train as run_training

    base_name = getattr(getattr(model, "config", None), "name_or_path", None) or None
    peft_model = peft_glue.fresh_lora(
        model, peft_glue.lora_config(rank, alpha, targets), seed=train.seed, base_name=base_name
    )
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    entries: list[dict] = []

    def on_log(step: int, metrics: dict) -> None:
        entries.append({"step": step, **{k: round(float(v), 6) for k, v in metrics.items()}})

    result = run_training(peft_model, tokenizer, records, train, on_log=on_log)
    peft_glue.save_lora(peft_model, out_dir)
    if log is not None:
        with atomic_open(log) as handle:
            handle.writelines(json.dumps(entry) + "\n" for entry in entries)
    return {
        "rank": rank,
        "alpha": alpha,
        "trainable_parameters": int(trainable),
        "records": len(records),
        "steps": result.steps,
        "first_loss": result.losses[0] if result.losses else None,
        "final_loss": result.losses[-1] if result.losses else None,
        "seconds": round(result.seconds, 3),
    }
