"""`taskexpert select-data`: K-shot guided retrieval from canonical JSONL pools (Stage 2).

Only the options and the printing; the run is `recipes.select_data.run_select_data`.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from taskexpert.configs import verb_command
from taskexpert.recipes.select_data import SelectDataConfig, run_select_data


@verb_command(SelectDataConfig)
def main(
    pool: list[Path] = typer.Option(
        ..., "--pool", help="Canonical JSONL pool file; repeat the option for several files."
    ),
    kshot: Path = typer.Option(..., "--kshot", help="K-shot records (canonical JSONL)."),
    budget: int = typer.Option(..., "--budget", help="How many pool records to select."),
    out: Path = typer.Option(..., "--out", help="Selected records (JSONL, with `score`)."),
    *,
    config: SelectDataConfig,
) -> None:
    """Select the pool records closest to a K-shot set, near-duplicates removed (Stage 2)."""
    summary = run_select_data(pool, kshot, budget, out, config)
    typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))
