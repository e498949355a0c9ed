"""`taskexpert import`: one dataset (or any table with --map) into canonical JSONL records."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from taskexpert.errors import InputError
from taskexpert.importers import FORMATS, import_dataset, parse_mapping
from taskexpert.io import check_output
from taskexpert.progress import progress as progress_bar
from taskexpert.records import Record, write_records


def _counted(records: Iterator[Record], per_source: Counter, empty: Counter) -> Iterator[Record]:
    for record in records:
        per_source[record.source] += 1
        empty[record.source] += not record.output.strip()
        yield record


def main(
    fmt: Annotated[str, typer.Argument(metavar="FORMAT", help=f"One of: {', '.join(FORMATS)}.")],
    src: Annotated[Path, typer.Argument(help="A file, or the dataset's folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output JSONL, written atomically.")],
    map_: Annotated[
        list[str] | None,
        typer.Option("--map", help="generic: FIELD=COLUMN, e.g. instruction=question (repeat)."),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help="Which split file of a folder (gsm8k: train|test; rocket-arc: 50shot…)."),
    ] = None,
    source: Annotated[
        str | None, typer.Option(help="generic: source label (default: the file name).")
    ] = None,
) -> None:
    """Import a dataset into canonical JSONL records; bad input leaves no output file."""
    check_output(out)
    if Path(out).resolve() == Path(src).resolve():
        raise InputError("output would overwrite the source file", out, field="out")
    mapping = parse_mapping(map_) if map_ else None
    records = import_dataset(fmt, src, split=split, mapping=mapping, source=source)
    per_source: Counter = Counter()
    empty: Counter = Counter()
    counted = _counted(records, per_source, empty)
    progress = progress_bar(counted, desc=f"import {fmt}", unit="rec")
    written = write_records(out, progress)
    mix = ", ".join(f"{name} {n}" for name, n in sorted(per_source.items())) or "none"
    note = f"; {empty.total()} with an empty output" if empty.total() else ""
    typer.echo(f"wrote {written} records to {out} ({mix}{note})")
