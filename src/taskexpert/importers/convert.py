"""`taskexpert import` as one call: a dataset (or any table with a mapping) into a JSONL file.

`ImportConfig` holds the verb's settings, written once; the input and output paths are its data.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from taskexpert.configs import Cli
from taskexpert.errors import InputError
from taskexpert.importers import import_dataset, parse_mapping
from taskexpert.io import check_output
from taskexpert.progress import progress as progress_bar
from taskexpert.records import Record, write_records


class ImportConfig(BaseModel):
    """import's settings: how to read the source (FORMAT, SRC and --out are its data)."""

    model_config = ConfigDict(extra="forbid")

    mapping: Annotated[list[str] | None, Cli(flag="--map")] = Field(
        None, description="generic: FIELD=COLUMN, e.g. instruction=question (repeat)."
    )
    split: str | None = Field(
        None, description="Which split file of a folder (gsm8k: train|test; rocket-arc: 50shot…)."
    )
    source: str | None = Field(None, description="generic: source label (default: the file name).")


@dataclass
class ImportSummary:
    """What was written: the record count, per source, and how many have an empty output."""

    written: int
    per_source: Counter
    empty: Counter

    def line(self, out: Path) -> str:
        mix = ", ".join(f"{name} {n}" for name, n in sorted(self.per_source.items())) or "none"
        note = f"; {self.empty.total()} with an empty output" if self.empty.total() else ""
        return f"wrote {self.written} records to {out} ({mix}{note})"


def _counted(records: Iterator[Record], per_source: Counter, empty: Counter) -> Iterator[Record]:
    for record in records:
        per_source[record.source] += 1
        empty[record.source] += not record.output.strip()
        yield record


def import_to_jsonl(
    fmt: str, src: str | Path, out: str | Path, config: ImportConfig | None = None
) -> ImportSummary:
    """Stream `src` (format `fmt`) into `out` as canonical records, written atomically, so bad
    input leaves no output file."""
    config = config or ImportConfig()
    check_output(out)
    if Path(out).resolve() == Path(src).resolve():
        raise InputError("output would overwrite the source file", out, field="out")
    mapping = parse_mapping(config.mapping) if config.mapping else None
    records = import_dataset(fmt, src, split=config.split, mapping=mapping, source=config.source)
    per_source: Counter = Counter()
    empty: Counter = Counter()
    counted = _counted(records, per_source, empty)
    written = write_records(out, progress_bar(counted, desc=f"import {fmt}", unit="rec"))
    return ImportSummary(written, per_source, empty)
