"""`taskexpert export RUN_DIR`: the run's winner, or (--merge) its mixture folded into one LoRA.

Only the options and the printing; the work is `recipes.export.run_export`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from taskexpert.configs import verb_command
from taskexpert.recipes.export import ExportConfig, run_export


@verb_command(ExportConfig)
def main(
    run_dir: Annotated[
        Path, typer.Argument(metavar="RUN_DIR", help="A run directory of `taskexpert run`.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Where to write [default: RUN_DIR/export, or RUN_DIR/export-merged]."
        ),
    ] = None,
    *,
    config: ExportConfig,
) -> None:
    """Copy the run's winner, or fold its mixture into one PEFT LoRA when routing collapsed."""
    summary = run_export(run_dir, out, config)
    if summary["mode"] == "merge":
        diff = summary["logit_difference"]
        state = "collapsed" if summary["collapsed"] else "NOT collapsed (--force)"
        low, high = min(summary["ranks"].values()), max(summary["ranks"].values())
        ranks = f"rank {high}" if low == high else f"ranks {low} to {high} per module"
        typer.echo(
            f"folded the mixture (seed {summary['seed']}, routing {state}) into one PEFT LoRA "
            f"of {ranks}"
        )
        typer.echo(
            f"logit difference mixture vs fold on {diff['items']} evaluation items "
            f"({diff['tokens']} tokens): max {diff['max_abs']:.3g}, mean {diff['mean_abs']:.3g}"
        )
    else:
        typer.echo(f"exported the run's winner: {summary['method']} ({summary['kind']})")
        # winner.json of runs made before the verdict was kept beside the winner has none
        for caution in (summary.get("verdict") or {}).get("cautions", []):
            typer.echo(f"caution: {caution}")
    typer.echo(f"load: {summary['load']}")
    typer.echo(f"wrote {summary['out']}")
