"""Importers: every dataset format of ../shared/data, and any table via a field mapping, into
canonical `Record`s. All of them stream (generators), so a million-line file never sits in memory.

Public API: `FORMATS` (name -> importer), `import_dataset(fmt, src, **options)`,
`import_all_pools(shared_data_dir)` (the open instruction pool, never a target's test split).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from taskexpert.errors import InputError
from taskexpert.importers.generic import RECORD_FIELDS, import_generic, parse_mapping
from taskexpert.importers.pools import (
    import_codealpaca,
    import_flan_cot,
    import_seed_tasks,
    import_t0,
    import_user_oriented,
)
from taskexpert.importers.targets import import_gsm8k, import_llm_foundry, import_rocket_arc
from taskexpert.records import Record
from taskexpert.textfile import is_encodable

__all__ = [
    "FORMATS",
    "OPEN_POOLS",
    "RECORD_FIELDS",
    "import_all_pools",
    "import_dataset",
    "importer_options",
    "parse_mapping",
]

Importer = Callable[..., Iterator[Record]]

FORMATS: dict[str, Importer] = {
    "gsm8k": import_gsm8k,
    "arc-challenge": functools.partial(import_llm_foundry, name="arc_challenge", lettered=True),
    "arc-easy": functools.partial(import_llm_foundry, name="arc_easy", lettered=True),
    "boolq": functools.partial(import_llm_foundry, name="boolq", lettered=False),
    "rocket-arc": import_rocket_arc,
    "flan-cot": import_flan_cot,
    "t0": import_t0,
    "seed-tasks": import_seed_tasks,
    "user-oriented": import_user_oriented,
    "codealpaca": import_codealpaca,
    "generic": import_generic,
}

# The open instruction pool of ../shared/data as (format, folder): no target task's data.
OPEN_POOLS: tuple[tuple[str, str], ...] = (
    ("flan-cot", "flan-v2-cot"),
    ("t0", "self-instruct"),
    ("seed-tasks", "self-instruct"),
    ("user-oriented", "self-instruct"),
    ("codealpaca", "codealpaca"),
)

log = logging.getLogger(__name__)


def importer_options(fmt: str) -> list[str]:
    """The keyword options a format accepts (e.g. ['split'] for gsm8k, ['mapping', 'source'])."""
    importer = _importer(fmt)
    bound = importer.keywords if isinstance(importer, functools.partial) else {}
    params = list(inspect.signature(importer).parameters)[1:]
    return [name for name in params if name not in bound]


def _importer(fmt: str) -> Importer:
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})", field="format")
    return FORMATS[fmt]


def _unique_ids(records: Iterator[Record], src: Path) -> Iterator[Record]:
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            raise InputError(f"duplicate id {record.id!r}", src, field="id")
        seen.add(record.id)
        yield record


def import_dataset(fmt: str, src: str | Path, **options: Any) -> Iterator[Record]:
    """Stream the records of `src` (file or folder) read as format `fmt`.

    Options set to None are ignored; an option the format does not take is an InputError, raised
    here rather than on first iteration. Ids are checked to be unique as records stream by.
    """
    importer = _importer(fmt)
    options = {key: value for key, value in options.items() if value is not None}
    accepted = importer_options(fmt)
    for key, value in options.items():
        if key not in accepted:
            takes = ", ".join(accepted) or "no options"
            raise InputError(f"format {fmt!r} takes {takes}, not {key!r}", field=key)
        if not is_encodable(value):  # it would only fail when the records are written out
            raise InputError(f"not valid Unicode: {value!r}", field=key)
    return _unique_ids(importer(Path(src), **options), Path(src))


def _normalize_text(text: str) -> str:
    return " ".join(text.split())


def import_all_pools(
    shared_data_dir: str | Path,
    *,
    exclude_instructions: Iterable[str] = (),
    drop_empty_output: bool = True,
    dropped: Counter | None = None,
) -> Iterator[Record]:
    """Every open-pool record of ../shared/data (FLAN CoT, T0, seed, user-oriented, Code Alpaca).

    Records whose instruction equals one of `exclude_instructions` (whitespace-insensitive; e.g.
    the K-shot questions, which FLAN's gsm8k_train repeats) are skipped, and so are records with
    an empty output (T0's trec templates have none) unless `drop_empty_output` is False. The
    skips are counted in `dropped` ('excluded', 'empty_output') and logged, never silent.
    """
    root = Path(shared_data_dir)
    excluded = {_normalize_text(text) for text in exclude_instructions}
    counts: Counter = Counter()
    seen: set[str] = set()
    for fmt, folder in OPEN_POOLS:
        for record in FORMATS[fmt](root / folder):
            if excluded and _normalize_text(record.instruction) in excluded:
                counts["excluded"] += 1
            elif drop_empty_output and not record.output.strip():
                counts["empty_output"] += 1
            else:
                if record.id in seen:
                    raise InputError(f"duplicate id {record.id!r} across pools", root, field="id")
                seen.add(record.id)
                yield record
    if dropped is not None:
        dropped.update(counts)
    if counts:
        log.warning("open pools: skipped %s", ", ".join(f"{n} {k}" for k, n in counts.items()))
