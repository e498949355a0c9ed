"""`taskexpert train-moe`: the chosen experts as a mixture, trained on K-shot + data (Stage 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from taskexpert.commands import options
from taskexpert.errors import InputError


def run_train_moe(
    base: str,
    experts: Path,
    data: Path,
    out: Path,
    *,
    kshot: Path | None = None,
    bank: Path | None = None,
    resume: bool = False,
    allow_pickle: bool = False,
    allow_other_base: bool = False,
    trust_remote_code: bool = False,
    device: str = "auto",
    dtype: str = "float32",
    **config: Any,
) -> dict:
    """Read and check every input, attach the experts, train, write the mixture directory."""
    from pydantic import ValidationError

    from taskexpert.models import load_base
    from taskexpert.moe.train import (
        MoeTrainConfig,
        build_mixture,
        check_experts_fit,
        check_output_dir,
        read_experts,
        train_mixture,
        training_records,
    )
    from taskexpert.records import load_records

    try:
        train_config = MoeTrainConfig(**config)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]).replace("_", "-")
        raise InputError(err["msg"], field=field) from None
    out = Path(out)
    check_output_dir(out)
    inputs = [p for p in (experts, data, kshot) if p is not None]
    if any(out.resolve() == Path(p).resolve() for p in inputs):
        raise InputError("output would overwrite an input file", out, field="out")
    kshot_records = load_records(kshot) if kshot is not None else []
    data_records = load_records(data)
    records, duplicates = training_records(kshot_records, data_records, kshot, data)
    if train_config.router_init == "kshot" and not kshot_records:
        raise InputError("--router-init kshot needs --kshot", field="router-init")
    adapters = read_experts(experts, bank=bank, allow_pickle=allow_pickle)
    model, tokenizer = load_base(
        base,
        dtype=dtype,
        device=device,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        progress=train_config.progress,
    )
    check_experts_fit(adapters, model, allow_other_base)
    model, counts = build_mixture(model, tokenizer, adapters, train_config, kshot_records)
    info = {
        "inputs": {
            "base": str(base),
            "experts": str(experts),
            "bank": str(bank) if bank else None,
            "data": str(data),
            "kshot": str(kshot) if kshot else None,
        },
        "data": {
            "kshot": len(kshot_records),
            "data": len(data_records),
            "duplicates_dropped": duplicates,
            "total": len(records),
        },
        "kshot_router_examples": counts,
    }
    return train_mixture(model, tokenizer, records, out, train_config, resume=resume, info=info)


def main(
    base: str = typer.Option(..., "--base", help="Base model directory, or 'smollm2'."),
    experts: Path = typer.Option(..., "--experts", help="experts.json from select-experts."),
    data: Path = typer.Option(..., "--data", help="Training records (e.g. selected.jsonl)."),
    out: Path = typer.Option(..., "--out", help="Mixture directory to write."),
    kshot: Path | None = typer.Option(
        None, "--kshot", help="K-shot records: added to the data, and used by --router-init kshot."
    ),
    bank: Path | None = typer.Option(
        None, "--bank", help="Bank directory or list file [default: the one in experts.json]."
    ),
    top_k: int = typer.Option(2, "--top-k", help="Experts per token (paper: 2)."),
    router_init: str = typer.Option(
        "fresh", "--router-init", help="fresh (small random) or kshot (K-shot hidden states)."
    ),
    lb_coef: float = typer.Option(
        0.0, "--lb-coef", help="Load-balancing loss coefficient (0: off, as in the paper)."
    ),
    epochs: float = typer.Option(5.0, "--epochs", help="Passes over the data (paper: 5)."),
    max_steps: int | None = typer.Option(
        None, "--max-steps", help="Optimizer steps; overrides --epochs."
    ),
    lr: float = typer.Option(5e-5, "--lr", help="Learning rate of the experts (and routers)."),
    router_lr: float | None = typer.Option(
        None, "--router-lr", help="Learning rate of the routers [default: --lr]."
    ),
    batch_size: int = typer.Option(
        64, "--batch-size", help="Examples per optimizer step, by gradient accumulation."
    ),
    micro_batch_size: int = typer.Option(
        8, "--micro-batch-size", help="Examples per forward pass (memory)."
    ),
    max_length: int = typer.Option(512, "--max-length", help="Tokens per example."),
    seed: int = typer.Option(0, "--seed", help="Seed of the routers and of the data order."),
    checkpoint_every: int = typer.Option(
        50, "--checkpoint-every", help="Optimizer steps between checkpoints (0: none)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted run with the same settings."
    ),
    allow_pickle: bool = options.ALLOW_PICKLE,
    allow_other_base: bool = options.ALLOW_OTHER_BASE,
    trust_remote_code: bool = options.TRUST_REMOTE_CODE,
    device: str = options.DEVICE,
    dtype: str = options.DTYPE,
) -> None:
    """Train the chosen LoRA experts and per-token routers on K-shot + selected data (Stage 3)."""
    summary = run_train_moe(
        base,
        experts,
        data,
        out,
        kshot=kshot,
        bank=bank,
        resume=resume,
        allow_pickle=allow_pickle,
        allow_other_base=allow_other_base,
        trust_remote_code=trust_remote_code,
        device=device,
        dtype=dtype,
        top_k=top_k,
        router_init=router_init,
        load_balancing_coef=lb_coef,
        epochs=epochs,
        max_steps=max_steps,
        lr=lr,
        router_lr=router_lr,
        batch_size=batch_size,
        micro_batch_size=micro_batch_size,
        max_length=max_length,
        seed=seed,
        checkpoint_every=checkpoint_every,
    )
    train = summary["train"]
    names = ", ".join(e["name"] for e in summary["experts"])
    typer.echo(
        f"trained a mixture of {len(summary['experts'])} experts ({names}), "
        f"top-{summary['top_k']}, {summary['trainable_parameters']:,} trainable parameters, "
        f"on {summary['records']} records: {train['steps']} steps, loss "
        f"{train['first_loss']:.4f} -> {train['final_loss']:.4f}"
    )
    if summary.get("final_router_entropy") is not None:
        load = ", ".join(f"{k} {v:.2f}" for k, v in summary["final_expert_load"].items())
        typer.echo(
            f"router entropy {summary['final_router_entropy']:.3f} (uniform "
            f"{summary['router_max_entropy']:.3f}); expert load: {load}"
        )
    typer.echo(f"wrote {out}")
