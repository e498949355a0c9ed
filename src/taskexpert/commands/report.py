"""`taskexpert report RUN_DIR`: only the argument and the printing; see recipes.report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from taskexpert.configs import verb_command
from taskexpert.recipes.report import ReportConfig, run_report


@verb_command(ReportConfig)
def main(
    run_dir: Annotated[
        Path, typer.Argument(help="A `taskexpert run` directory, or a DiverseEvol run's.")
    ],
    *,
    config: ReportConfig,
) -> None:
    """Write report.html (self-contained, images inline) and report.md for a run directory."""
    html_path, md_path = run_report(run_dir, config)
    typer.echo(f"wrote {html_path}")
    typer.echo(f"wrote {md_path}")
