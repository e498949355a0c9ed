"""Any JSONL/JSON/CSV/TSV/Parquet file into records through a field mapping.

A mapping names, for a record field, the column that holds it (`instruction=question`). Record
fields without a mapping are read from a column of the same name when there is one; mapped
fields that are not record fields are kept as extra fields. Other columns are dropped, so the
output stays JSON-serialisable whatever the input held.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from taskexpert.errors import InputError
from taskexpert.importers.readers import iter_delimited, iter_objects
from taskexpert.records import Record, parse_record
from taskexpert.textfile import check_encodable, is_encodable

RECORD_FIELDS = ("id", "instruction", "input", "output", "answer", "rationale", "source", "choices")
_REQUIRED = ("instruction", "output")
_NUMBER_AS_TEXT = ("id", "answer")


def parse_mapping(items: Iterable[str]) -> dict[str, str]:
    """['instruction=question', ...] -> {'instruction': 'question'} (the CLI's --map values)."""
    mapping: dict[str, str] = {}
    for item in items:
        if not is_encodable(item):  # bytes in argv that are not UTF-8
            raise InputError(f"not valid Unicode: {item!r}", field="--map")
        target, sep, column = item.partition("=")
        if not sep or not target.strip() or not column.strip():
            raise InputError(f"expected FIELD=COLUMN, got {item!r}", field="--map")
        if target.strip() in mapping:
            raise InputError(f"field {target.strip()!r} mapped twice", field="--map")
        mapping[target.strip()] = column.strip()
    return mapping


def _rows(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return iter_delimited(path, "\t" if suffix == ".tsv" else ",", header=True)
    return iter_objects(path)


def _coerce(target: str, column: str, value: Any, path: Path, line: int) -> Any:
    """The cell as the record field expects it; None means 'absent'. Errors name the column."""
    if value is None and target in _REQUIRED:
        # JSON null, or the cell a CSV row shorter than its header lacks
        raise InputError(f"{target}: null or missing value", path, line, column)
    if value is None or value == "" and target not in _REQUIRED:
        return None
    if target == "choices":
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):  # malformed, a huge integer, or too deep
                raise InputError("choices: malformed JSON list", path, line, column) from None
            check_encodable(value, path, line)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError("choices: expected a list of strings", path, line, column)
        return value
    if target in _NUMBER_AS_TEXT and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if target in RECORD_FIELDS and not isinstance(value, str):
        kind = type(value).__name__
        raise InputError(f"{target}: expected a string, got {kind}", path, line, column)
    if target == "instruction" and not value.strip():  # else the record names 'instruction'
        raise InputError("instruction: must not be empty", path, line, column)
    try:  # an extra field must survive the JSONL write-out
        json.dumps(value)
    except (TypeError, ValueError):
        kind = type(value).__name__
        raise InputError(f"{target}: {kind} is not JSON-serialisable", path, line, column) from None
    return value


def import_generic(
    src: Path, mapping: Mapping[str, str] | None = None, source: str | None = None
) -> Iterator[Record]:
    """Records from a JSONL/JSON/CSV/TSV/Parquet file; `source` defaults to the file's stem."""
    mapping = dict(mapping or {})
    if src.is_dir():
        raise InputError("expected a file, got a folder", src)
    targets = list(dict.fromkeys([*RECORD_FIELDS, *mapping]))
    for index, (line, row) in enumerate(_rows(src)):
        fields: dict[str, Any] = {}
        for target in targets:
            column = mapping.get(target, target)
            if column not in row:
                if target in mapping:
                    raise InputError(f"missing column mapped to {target!r}", src, line, column)
                if target in _REQUIRED:
                    hint = f"missing required field (map a column with --map {target}=COLUMN)"
                    raise InputError(hint, src, line, target)
                continue
            value = _coerce(target, column, row[column], src, line)
            if value is not None:
                fields[target] = value
        fields.setdefault("id", f"{src.stem}-{index:05d}")
        fields["source"] = source or fields.get("source") or src.stem
        yield parse_record(fields, src, line)
