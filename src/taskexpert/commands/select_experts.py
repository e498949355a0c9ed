"""`taskexpert select-experts`: choose N LoRA experts from a bank with a K-shot set (Stage 1).

Only the options and the printing; the run is `recipes.select_experts.run_select_experts`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from taskexpert.configs import verb_command
from taskexpert.recipes.select_experts import SelectExpertsConfig, run_select_experts


@verb_command(SelectExpertsConfig)
def main(
    base: str = typer.Option(..., "--base", help="Base model directory, or 'smollm2'."),
    bank: Path = typer.Option(
        ..., "--bank", help="Directory of PEFT LoRA adapter dirs, or a list file (one per line)."
    ),
    kshot: Path = typer.Option(
        ..., "--kshot", help="K-shot records (JSONL with answer/rationale)."
    ),
    out: Path = typer.Option(..., "--out", help="Where to write experts.json."),
    *,
    config: SelectExpertsConfig,
) -> None:
    """Score a LoRA bank on a K-shot set and choose N diverse, competent experts (Stage 1)."""
    selection = run_select_experts(base, bank, kshot, out, config)
    typer.echo(selection.table())
    for warning in selection.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"\n{selection.reason}\nwrote {out}")
