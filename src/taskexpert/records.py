"""The canonical record (Alpaca-style, as both papers' code uses) and its validated I/O.

A record is one JSON object per line:
``{"id", "instruction", "input", "output", "answer"?, "rationale"?, "source"?, "choices"?}``.
``output`` is the full target text, ``answer`` the short gold answer for exact match,
``rationale`` a chain of thought for reasoning perplexity, ``source`` the dataset it came from.
Extra fields are kept as they are, so a stage can pass through whatever the user brought.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from taskexpert.errors import InputError
from taskexpert.io import atomic_open
from taskexpert.textfile import check_encodable, decode_error, has_surrogate_escape, open_text

REQUIRED_FIELDS = ("id", "instruction", "output")


class Record(BaseModel):
    """One training or evaluation example."""

    model_config = ConfigDict(extra="allow")

    id: str
    instruction: str
    input: str = ""
    output: str
    answer: str | None = None
    rationale: str | None = None
    source: str | None = None
    choices: list[str] | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_string(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("instruction")
    @classmethod
    def _instruction_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with the None-valued optional fields left out (compact JSONL)."""
        return self.model_dump(exclude_none=True)

    @property
    def prompt_text(self) -> str:
        """Instruction and input, the part a model is conditioned on."""
        return f"{self.instruction}\n{self.input}" if self.input else self.instruction

    @property
    def text(self) -> str:
        """instruction + input + output: what the sentence encoder embeds
        (docs/design.md Stage 2)."""
        return f"{self.prompt_text}\n{self.output}"


def parse_record(obj: Any, path: str | Path | None = None, line: int | None = None) -> Record:
    """Validate one decoded object; the error names file, line and the offending field."""
    if not isinstance(obj, dict):
        raise InputError(f"expected a JSON object, got {type(obj).__name__}", path, line)
    try:
        return Record.model_validate(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        reason = "missing required field" if err["type"] == "missing" else err["msg"]
        raise InputError(reason, path, line, field) from None


def parse_json_line(text: str, path: Path, line: int) -> Any:
    """One JSONL line decoded; every way it can be bad is an InputError naming the line."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON ({exc.msg}, column {exc.colno})", path, line) from None
    except ValueError as exc:  # an integer past Python's 4300-digit limit
        raise InputError(f"malformed JSON ({str(exc).split(':')[0]})", path, line) from None
    except RecursionError:
        raise InputError("malformed JSON (nested too deeply)", path, line) from None
    if has_surrogate_escape(text):
        check_encodable(obj, path, line)
    return obj


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with open_text(path) as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                yield number, parse_json_line(raw, path, number)


def _iter_json_list(path: Path) -> Iterator[tuple[int, Any]]:
    with open_text(path) as handle:
        text = handle.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON ({exc.msg})", path, exc.lineno) from None
    except ValueError as exc:
        raise InputError(f"malformed JSON ({str(exc).split(':')[0]})", path) from None
    except RecursionError:
        raise InputError("malformed JSON (nested too deeply)", path) from None
    if not isinstance(data, list):
        raise InputError("expected a JSON list of objects", path)
    suspect = has_surrogate_escape(text)
    for number, obj in enumerate(data, start=1):
        if suspect:
            check_encodable(obj, path, number)
        yield number, obj


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches():
            for obj in batch.to_pylist():
                row += 1
                yield row, obj
    except (pa.ArrowException, ValueError, OverflowError) as exc:  # corrupt, or not Parquet
        raise InputError(f"not a readable Parquet file ({exc})", path) from None


def iter_json_objects(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line or row number, object) pairs from .jsonl, .json (a list) or .parquet files."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found or not a regular file", path)
    suffix = path.suffix.lower()
    readers = {".parquet": _iter_parquet, ".json": _iter_json_list}
    try:
        yield from readers.get(suffix, _iter_jsonl)(path)
    except UnicodeDecodeError as exc:
        raise decode_error(path, exc) from None
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror or exc})", path) from None


def _check_json_extras(record: Record, path: str | Path, line: int) -> None:
    """Parquet cells can be dates, decimals or bytes, which a JSONL write-out cannot hold."""
    for name, value in (record.model_extra or {}).items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            kind = type(value).__name__
            raise InputError(f"{kind} is not JSON-serialisable", path, line, name) from None


def _parsed(path: str | Path) -> Iterator[tuple[int, Record]]:
    parquet = Path(path).suffix.lower() == ".parquet"
    for number, obj in iter_json_objects(path):
        record = parse_record(obj, path, number)
        if parquet:
            _check_json_extras(record, path, number)
        yield number, record


def read_records(path: str | Path) -> Iterator[Record]:
    """Stream validated records from a JSONL/JSON/Parquet file; the first bad one raises."""
    for _, record in _parsed(path):
        yield record


def load_records(path: str | Path, *, allow_empty: bool = False) -> list[Record]:
    """All records of a file, with duplicate ids and (unless allowed) emptiness reported."""
    records, seen = [], {}
    for number, record in _parsed(path):
        if record.id in seen:
            raise InputError(
                f"duplicate id {record.id!r} (first on line {seen[record.id]})", path, number, "id"
            )
        seen[record.id] = number
        records.append(record)
    if not records and not allow_empty:
        raise InputError("no records", path)
    return records


def records_digest(records: Iterable[Record]) -> str:
    """sha256 of records as trained on (canonical JSON of each, in order): what a trained
    artifact records about its data, so two runs on the same records can be told apart."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record.to_dict(), sort_keys=True).encode())
    return digest.hexdigest()


def write_records(path: str | Path, records: Iterable[Record | dict[str, Any]]) -> int:
    """Write records as JSONL atomically; returns how many were written."""
    count = 0
    with atomic_open(path) as handle:
        for record in records:
            obj = record.to_dict() if isinstance(record, Record) else record
            handle.write(json.dumps(obj, ensure_ascii=False) + "\n")
            count += 1
    return count
