"""`taskexpert import`: one dataset (or any table with --map) into canonical JSONL records."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from taskexpert.configs import verb_command
from taskexpert.importers import FORMATS
from taskexpert.importers.convert import ImportConfig, import_to_jsonl


@verb_command(ImportConfig)
def main(
    fmt: Annotated[str, typer.Argument(metavar="FORMAT", help=f"One of: {', '.join(FORMATS)}.")],
    src: Annotated[Path, typer.Argument(help="A file, or the dataset's folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output JSONL, written atomically.")],
    *,
    config: ImportConfig,
) -> None:
    """Import a dataset into canonical JSONL records; bad input leaves no output file."""
    summary = import_to_jsonl(fmt, src, out, config)
    typer.echo(summary.line(out))
