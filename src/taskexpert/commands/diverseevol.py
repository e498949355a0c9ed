"""`taskexpert diverseevol`: the self-evolving diverse subset of Stage 4, with resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from taskexpert.configs import verb_command
from taskexpert.recipes.diverseevol import DiverseEvolSettings, run_diverseevol
from taskexpert.runtime import is_main_process


@verb_command(DiverseEvolSettings)
def main(
    base: Annotated[str, typer.Option("--base", help="Base model directory, or 'smollm2'.")],
    pool: Annotated[Path, typer.Option("--pool", help="Pool records (canonical JSONL).")],
    out: Annotated[Path, typer.Option("--out", help="Run directory (created; resumed if there).")],
    eval_path: Annotated[
        Path | None, typer.Option("--eval", help="Records to report exact match on per round.")
    ] = None,
    *,
    config: DiverseEvolSettings,
) -> None:
    """DiverseEvol: grow a training subset round by round by K-center on the model's own
    embeddings (or a baseline); every round's subset, model and summary go into --out."""
    result = run_diverseevol(config.run_config(base, pool, eval_path), out)
    if not is_main_process():  # under `accelerate launch`, rank 0 speaks for the run
        return
    rounds = [
        {k: s.get(k) for k in ("round", "size", "vendi", "exact_match", "seconds") if k in s}
        for s in result.rounds
    ]
    summary = {
        "run_dir": str(result.run_dir),
        "resumed_after_rounds": result.resumed_from,
        "rounds": rounds,
    }
    typer.echo(json.dumps(summary, indent=2))
