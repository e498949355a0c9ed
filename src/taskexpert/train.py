"""Supervised fine-tuning with the loss on response tokens only: one loop for every stage.

Whatever has `requires_grad` trains: a full model (testbed pretraining), a PEFT LoRA (the
testbed bank, LoRA baselines, DiverseEvol rounds) or a custom module (the mixture of LoRA
experts, which adds its load-balancing loss through `aux_loss` and logs router entropy
through `on_log`). Prompts are formatted by `prompts.format_prompt` and masked by
`lm.encode_pair`, so a model is trained on exactly what it is scored and evaluated on.

The loop is built on `accelerate.Accelerator`, so `accelerate launch` spreads it over several
GPUs without code changes (each process takes every n-th micro-batch); on this machine it is
a plain CPU loop. Checkpoints hold only the trainable parameters (safetensors) plus optimizer,
scheduler, RNG and step, written atomically, so an interrupted run resumes where it stopped
and ends with the same weights as an uninterrupted one.

Parameters may learn at their own rates (`lr_overrides`: a regex on the parameter name -> LR),
e.g. the mixture's routers faster than its experts; every trainable parameter falls in exactly
one group, and the schedule scales all groups alike.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from taskexpert.errors import InputError
from taskexpert.io import atomic_dir
from taskexpert.lm import EncodedPair, collate, encode_pair, ensure_pad_token
from taskexpert.progress import progress as progress_bar
from taskexpert.prompts import format_prompt
from taskexpert.records import Record
from taskexpert.runtime import follow_load, resolve_device

CHECKPOINT_NAME = "checkpoint"
DEFAULT_GROUP = "default"  # the parameters no lr_overrides pattern matches
# Batches are drawn from shuffled windows of this many batches, sorted by length inside a
# window: little padding, yet every batch mixes examples from all over the set.
LENGTH_GROUP_WINDOW = 50


class TrainConfig(BaseModel):
    """Every knob of a fine-tuning run; the defaults suit a LoRA on a small model."""

    model_config = ConfigDict(extra="forbid")

    epochs: float = Field(1.0, gt=0, description="passes over the data (fractions allowed)")
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; overrides epochs")
    lr: float = Field(2e-4, gt=0)
    lr_overrides: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        description="regex searched in parameter names -> that group's LR (0 freezes it); "
        "the other trainable parameters use lr",
    )
    batch_size: int = Field(16, gt=0, description="examples per micro-batch (per process)")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, description="clip the gradient norm; None: off")
    max_length: int = Field(512, gt=1, description="tokens per example, target tail cut first")
    mixed_precision: Literal["no", "bf16"] = Field(
        "no",
        description="autocast the forward in bf16 (weights and optimizer stay fp32): GPUs "
        "since Ampere, CPUs with AVX512-BF16 or AMX (1.4x faster on this testbed's CPU)",
    )
    seed: int = 0
    log_every: int = Field(10, gt=0, description="optimizer steps between on_log calls")
    checkpoint_dir: Path | None = None
    checkpoint_every: int = Field(0, ge=0, description="optimizer steps; 0: no checkpoints")
    resume: bool = Field(False, description="continue from checkpoint_dir when one is there")
    progress: bool = Field(True, description="a bar on a terminal, a few log lines elsewhere")

    @field_validator("lr_overrides")
    @classmethod
    def _patterns_compile(cls, overrides: dict[str, float]) -> dict[str, float]:
        for pattern in overrides:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"bad regular expression {pattern!r}: {exc}") from None
        return overrides


@dataclass
class TrainResult:
    """What a run did: the loss after every optimizer step, how fast it went, and the LR
    groups ({name: pattern or "default", lr, tensors, parameters})."""

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    tokens_per_second: float = 0.0
    resumed_from: int = 0
    param_groups: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "tokens_per_second": round(self.tokens_per_second, 1),
            "resumed_from": self.resumed_from,
            "first_loss": self.losses[0] if self.losses else None,
            "final_loss": self.losses[-1] if self.losses else None,
            "param_groups": self.param_groups,
        }


AuxLoss = Callable[[torch.nn.Module], "torch.Tensor | None"]
OnLog = Callable[[int, dict], None]


def encode_records(
    tokenizer, records: Sequence[Record], max_length: int = 512
) -> list[EncodedPair]:
    """Prompt (masked) + output (trained) token ids for each record."""
    pairs = []
    for record in records:
        if not record.output:
            raise InputError(
                f"record {record.id!r}: empty output, nothing to train on", field="output"
            )
        prompt = format_prompt(record, tokenizer)
        pairs.append(encode_pair(tokenizer, prompt, record.output, max_length))
    return pairs


class _BatchPlan:
    """Deterministic micro-batches: epoch e's order depends only on (seed, e), so a resumed
    run sees exactly the batches the uninterrupted run would have seen."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.per_epoch = math.ceil(len(self.lengths) / batch_size)
        self._cache: tuple[int, list[list[int]]] | None = None

    def _epoch(self, epoch: int) -> list[list[int]]:
        if self._cache is None or self._cache[0] != epoch:
            rng = random.Random(self.seed * 1_000_003 + epoch)
            order = list(range(len(self.lengths)))
            rng.shuffle(order)
            window = self.batch_size * LENGTH_GROUP_WINDOW
            batches = []
            for start in range(0, len(order), window):
                chunk = sorted(order[start : start + window], key=lambda i: self.lengths[i])
                batches += [
                    chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)
                ]
            rng.shuffle(batches)
            self._cache = (epoch, batches)
        return self._cache[1]

    def __getitem__(self, k: int) -> list[int]:
        return self._epoch(k // self.per_epoch)[k % self.per_epoch]


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train, by name: all a checkpoint needs besides the frozen base."""
    return {
        n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad
    }


def lr_groups(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]], overrides: Mapping[str, float]
) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    """Trainable parameters by LR group: the override pattern their name matches, else default.

    Groups come in the order of `overrides`, then DEFAULT_GROUP (left out when empty). A
    pattern that matches no trainable parameter, or a name two patterns match, is an error:
    either would silently train something at a rate nobody asked for.
    """
    if DEFAULT_GROUP in overrides:
        raise InputError(
            f"{DEFAULT_GROUP!r} names the group of the unmatched parameters, not a pattern",
            field="lr_overrides",
        )
    compiled = {pattern: re.compile(pattern) for pattern in overrides}
    groups: dict[str, list] = {pattern: [] for pattern in overrides}
    groups[DEFAULT_GROUP] = []
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        hits = [pattern for pattern, regex in compiled.items() if regex.search(name)]
        if len(hits) > 1:
            raise InputError(
                f"parameter {name} matches two patterns, {hits[0]!r} and {hits[1]!r}; "
                "each parameter must fall in one group",
                field="lr_overrides",
            )
        groups[hits[0] if hits else DEFAULT_GROUP].append((name, param))
    if not any(groups.values()):
        raise ValueError("the model has no parameter with requires_grad=True: nothing to train")
    for pattern in overrides:
        if not groups[pattern]:
            trainable = [n for members in groups.values() for n, _ in members]
            raise InputError(
                f"pattern {pattern!r} matches no trainable parameter "
                f"(trainable names look like {trainable[0]!r})",
                field="lr_overrides",
            )
    if not groups[DEFAULT_GROUP]:
        del groups[DEFAULT_GROUP]
    return groups


def _make_optimizer(
    model: torch.nn.Module, config: TrainConfig
) -> tuple[torch.optim.Optimizer, list[dict]]:
    """AdamW with one LR group per pattern (each split by weight decay) and its report."""
    optimizer_groups, report = [], []
    for name, members in lr_groups(model.named_parameters(), config.lr_overrides).items():
        lr = config.lr if name == DEFAULT_GROUP else config.lr_overrides[name]
        decay = [p for _, p in members if p.ndim >= 2]
        no_decay = [p for _, p in members if p.ndim < 2]
        for params, weight_decay in ((decay, config.weight_decay), (no_decay, 0.0)):
            if params:
                optimizer_groups.append(
                    {"params": params, "lr": lr, "weight_decay": weight_decay, "name": name}
                )
        report.append(
            {
                "name": name,
                "lr": lr,
                "tensors": len(members),
                "parameters": sum(p.numel() for _, p in members),
            }
        )
    return torch.optim.AdamW(optimizer_groups, lr=config.lr), report


def _scheduled_lr(optimizer: torch.optim.Optimizer, base_lr: float) -> float:
    """The base LR as the schedule has it now (every group is scaled by the same factor)."""
    for group in optimizer.param_groups:
        if group.get("initial_lr"):
            return base_lr * group["lr"] / group["initial_lr"]
    return 0.0


def _save_checkpoint(
    path: Path, model, optimizer, scheduler, step: int, losses, groups: list[dict]
) -> None:
    from safetensors.torch import save_file

    with atomic_dir(path) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(),
            },
            tmp / "state.pt",
        )
        progress = {"step": step, "losses": losses, "param_groups": groups}
        (tmp / "progress.json").write_text(json.dumps(progress))


def _load_checkpoint(
    path: Path, model, optimizer, scheduler, groups: list[dict]
) -> tuple[int, list[float]]:
    from safetensors.torch import load_file

    progress = json.loads((path / "progress.json").read_text())
    # Optimizer state is per group and restores each group's LR: other groups cannot resume.
    if progress.get("param_groups", groups) != groups:
        raise InputError(
            f"the checkpoint was written with other LR groups ({progress['param_groups']}, "
            f"now {groups}); start over without resume",
            path / "progress.json",
            field="lr_overrides",
        )
    saved = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(saved) != expected:
        missing, extra = sorted(expected - set(saved)), sorted(set(saved) - expected)
        raise InputError(
            f"checkpoint does not match the model (missing {missing[:3]}, extra {extra[:3]})",
            path / "trainable.safetensors",
        )
    with torch.no_grad():
        for name, tensor in saved.items():
            if params[name].shape != tensor.shape:
                raise InputError(f"shape mismatch for {name}", path / "trainable.safetensors")
            params[name].copy_(tensor)
    # Our own file, written by _save_checkpoint: optimizer state needs pickle.
    state = torch.load(path / "state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    return int(progress["step"]), list(progress["losses"])


def _mean_over_processes(accelerator, *values: float) -> list[float]:
    """Each value averaged over the processes (what one process would have logged)."""
    local = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    return [float(v) for v in accelerator.reduce(local, reduction="mean")]


def accumulation(batch_size: int, micro_batch_size: int, processes: int = 1) -> tuple[int, int]:
    """(micro-batch size, micro-batches per optimizer step and process) for a global batch of
    `batch_size` examples: a run on more processes then takes the same optimizer steps on the
    same micro-batches, each process every n-th one (see `train`)."""
    micro = min(micro_batch_size, max(1, batch_size // processes))
    return micro, max(1, math.ceil(batch_size / (micro * processes)))


def total_steps(n_records: int, config: TrainConfig, num_processes: int = 1) -> int:
    """Optimizer steps the run will take."""
    if config.max_steps is not None:
        return config.max_steps
    per_epoch = math.ceil(n_records / config.batch_size)
    return max(1, math.ceil(config.epochs * per_epoch / (config.grad_accum * num_processes)))


def train(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Record],
    config: TrainConfig | None = None,
    *,
    aux_loss: AuxLoss | None = None,
    on_log: OnLog | None = None,
) -> TrainResult:
    """Fine-tune `model` in place on `records`, loss on `output` tokens only (see module doc)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from transformers import get_scheduler

    config = config or TrainConfig()
    if not records:
        raise InputError("no training records")
    pad_id = ensure_pad_token(tokenizer)
    torch.manual_seed(config.seed)
    random.seed(config.seed)

    # autocast here rather than Accelerator(mixed_precision=...): accelerate keeps that in a
    # process-wide state that a second run with another setting may not change
    # under `accelerate launch` a routed expert may see no token of a micro-batch: DDP must
    # not wait for its gradient (find_unused_parameters); one process ignores the handler
    accelerator = Accelerator(
        cpu=resolve_device() != "cuda",  # CPU, not MPS, off a GPU
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    pairs = encode_records(tokenizer, records, config.max_length)
    plan = _BatchPlan([len(p.input_ids) for p in pairs], config.batch_size, config.seed)
    n_steps = total_steps(len(pairs), config, accelerator.num_processes)

    optimizer, groups = _make_optimizer(model, config)
    scheduler = get_scheduler(
        config.schedule,
        optimizer,
        num_warmup_steps=int(config.warmup_ratio * n_steps),
        num_training_steps=n_steps,
    )
    start, losses = 0, []
    ckpt = Path(config.checkpoint_dir) / CHECKPOINT_NAME if config.checkpoint_dir else None
    if config.resume and ckpt is not None and (ckpt / "progress.json").is_file():
        start, losses = _load_checkpoint(ckpt, model, optimizer, scheduler, groups)
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device

    model.train()
    bf16 = config.mixed_precision == "bf16"
    tokens, began = 0, time.perf_counter()
    bar = progress_bar(
        total=n_steps,
        initial=start,
        desc="train",
        unit="step",
        enabled=config.progress and accelerator.is_local_main_process,
    )
    step = start
    try:
        while step < n_steps:
            step_loss, step_aux = 0.0, 0.0
            for micro in range(config.grad_accum):
                index = (step * config.grad_accum + micro) * accelerator.num_processes
                batch = collate([pairs[i] for i in plan[index + accelerator.process_index]], pad_id)
                batch = {k: v.to(device) for k, v in batch.items()}
                tokens += int(batch["attention_mask"].sum())
                with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                    loss = model(**batch).loss
                if aux_loss is not None:
                    extra = aux_loss(accelerator.unwrap_model(model))
                    if extra is not None:
                        loss = loss + extra
                        step_aux += float(extra.detach()) / config.grad_accum
                accelerator.backward(loss / config.grad_accum)
                step_loss += float(loss.detach()) / config.grad_accum
            if accelerator.num_processes > 1:  # log the mean over every process's batches
                step_loss, step_aux = _mean_over_processes(accelerator, step_loss, step_aux)
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], config.max_grad_norm
                )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            follow_load()  # re-pins threads inside an `adaptive_threads` block (testbed build)
            step += 1
            losses.append(round(step_loss, 6))
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}")
            if on_log is not None and (step % config.log_every == 0 or step == n_steps):
                metrics = {"loss": step_loss, "lr": _scheduled_lr(optimizer, config.lr)}
                if aux_loss is not None:
                    metrics["aux_loss"] = step_aux
                on_log(step, metrics)
            if ckpt is not None and config.checkpoint_every and step % config.checkpoint_every == 0:
                if accelerator.is_main_process:
                    _save_checkpoint(
                        ckpt,
                        accelerator.unwrap_model(model),
                        optimizer,
                        scheduler,
                        step,
                        losses,
                        groups,
                    )
                accelerator.wait_for_everyone()
    finally:
        bar.close()
        model.eval()
    seconds = time.perf_counter() - began
    return TrainResult(
        losses=losses,
        steps=step,
        seconds=seconds,
        tokens_per_second=tokens * accelerator.num_processes / max(seconds, 1e-9),
        resumed_from=start,
        param_groups=groups,
    )
