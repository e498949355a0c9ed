"""`taskexpert train-moe`: the chosen experts as a mixture, trained on K-shot + data (Stage 3)."""

from __future__ import annotations

from pathlib import Path

import typer

from taskexpert.configs import verb_command
from taskexpert.recipes.train_moe import TrainMoeConfig, run_train_moe
from taskexpert.runtime import is_main_process


@verb_command(TrainMoeConfig)
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
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted run with the same settings."
    ),
    *,
    config: TrainMoeConfig,
) -> None:
    """Train the chosen LoRA experts and per-token routers on K-shot + selected data (Stage 3)."""
    summary = run_train_moe(
        base, experts, data, out, kshot=kshot, bank=bank, resume=resume, config=config
    )
    if not is_main_process():  # under `accelerate launch`, rank 0 speaks for the run
        return
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
