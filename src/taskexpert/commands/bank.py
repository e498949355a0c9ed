"""`taskexpert bank build`: one LoRA per real source, cached and resumable.

Only the options and the printing; the build is `recipes.bank_build.run_bank_build`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from taskexpert.configs import verb_command
from taskexpert.recipes.bank_build import BankBuildConfig, format_summary, run_bank_build


@verb_command(BankBuildConfig)
def main(
    out: Path = typer.Option(..., "--out", help="The bank directory (one adapter per source)."),
    data: Path = typer.Option(
        Path("../shared/data"), "--data", help="The shared data directory the sources are in."
    ),
    *,
    config: BankBuildConfig,
) -> None:
    """Train one LoRA per named real source (adapters already built with the same settings
    and data are kept; a killed build continues with the next adapter)."""
    from taskexpert.progress import is_quiet

    config = config.model_copy(update={"progress": not is_quiet()})
    summary = run_bank_build(out, config, data)
    typer.echo(format_summary(summary))
    typer.echo(
        f"\nbank {summary['out']}: {len(summary['built'])} built, "
        f"{len(summary['cached'])} cached, {summary['seconds']:.1f}s"
    )
