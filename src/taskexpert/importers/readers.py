"""Row readers and field checks shared by the importers.

Every reader streams (one row in memory at a time) and reports the 1-based line of each row,
so an importer's error can always name the file, the line and the field.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from taskexpert.errors import InputError
from taskexpert.prompts import ANSWER_PREFIX, reasoning_target
from taskexpert.records import Record, iter_json_objects, parse_record
from taskexpert.textfile import decode_error, open_text

# csv's default cell limit (128 KiB) rejects long passages and code; allow any cell that fits.
_CELL_LIMIT = 2**31 - 1


def iter_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, object) pairs of a JSONL/JSON-list/Parquet file; a non-object row is an error."""
    for line, obj in iter_json_objects(path):
        if not isinstance(obj, dict):
            raise InputError(f"expected a JSON object, got {type(obj).__name__}", path, line)
        yield line, obj


def iter_delimited(
    path: Path, delimiter: str, *, header: bool, quoting: int = csv.QUOTE_MINIMAL
) -> Iterator[tuple[int, Any]]:
    """(line, row) pairs of a CSV/TSV file: a dict per row with a header, else a list."""
    if not path.is_file():
        raise InputError("file not found or not a regular file", path)
    line = 0
    if csv.field_size_limit() < _CELL_LIMIT:
        csv.field_size_limit(_CELL_LIMIT)
    try:
        with open_text(path, newline="") as handle:
            if header:
                reader: Any = csv.DictReader(handle, delimiter=delimiter, quoting=quoting)
                if reader.fieldnames is None:
                    return
            else:
                reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
            for row in reader:
                line = reader.line_num
                if header and None in row:
                    raise InputError("more cells than header columns", path, line)
                yield line, row
    except csv.Error as exc:
        raise InputError(f"malformed CSV ({exc})", path, line + 1) from None
    except UnicodeDecodeError as exc:
        raise decode_error(path, exc) from None
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror or exc})", path) from None


def require_str(obj: Mapping[str, Any], key: str, path: Path, line: int) -> str:
    """obj[key] as a string; a missing or non-string value names file, line and field."""
    if key not in obj or obj[key] is None:
        raise InputError("missing required field", path, line, key)
    value = obj[key]
    if not isinstance(value, str):
        raise InputError(f"expected a string, got {type(value).__name__}", path, line, key)
    return value


def require_text(obj: Mapping[str, Any], key: str, path: Path, line: int) -> str:
    """`require_str` that also rejects blank text, naming the dataset's field, not the record's."""
    value = require_str(obj, key, path, line)
    if not value.strip():
        raise InputError("must not be empty", path, line, key)
    return value


def require_id(obj: Mapping[str, Any], key: str, path: Path, line: int) -> str:
    """obj[key], a string or an integer, as a string: a list or object would make a garbled id."""
    value = obj.get(key)
    if value is None:
        raise InputError("missing required field", path, line, key)
    if isinstance(value, bool) or not isinstance(value, str | int):
        kind = type(value).__name__
        raise InputError(f"expected a string or integer, got {kind}", path, line, key)
    return str(value)


def optional_str(obj: Mapping[str, Any], key: str, path: Path, line: int) -> str:
    """obj[key] as a string, '' when absent or null; a non-string value is an error."""
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"expected a string, got {type(value).__name__}", path, line, key)
    return value


def require_list(obj: Mapping[str, Any], key: str, path: Path, line: int) -> list[Any]:
    """obj[key] as a non-empty list, with the same error contract as `require_str`."""
    if key not in obj or obj[key] is None:
        raise InputError("missing required field", path, line, key)
    value = obj[key]
    if not isinstance(value, list) or not value:
        raise InputError("expected a non-empty list", path, line, key)
    return value


def resolve_files(src: Path, patterns: Sequence[str], *, single: bool = False) -> list[Path]:
    """The file itself, or the files of a folder matching the first glob of `patterns` that hits."""
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise InputError("file or folder not found", src)
    for pattern in patterns:
        found = sorted(p for p in src.glob(pattern) if p.is_file())
        if len(found) > 1 and single:
            names = ", ".join(p.name for p in found)
            raise InputError(f"several files match {pattern} ({names}); pass one file", src)
        if found:
            return found
    raise InputError(f"no file matching {' or '.join(patterns)} in this folder", src)


def split_file(src: Path, split: str | None, default: str, pattern: str) -> tuple[Path, str]:
    """The file for `split` (folder: `pattern` filled in; file: itself) and the split label."""
    if src.is_dir():
        split = split or default
        path = src / pattern.format(split=split)
        if not path.is_file():
            raise InputError(f"no {path.name} in this folder (split {split!r})", src)
        return path, split
    prefix = pattern.split("{split}")[0]
    return src, split or src.stem.removeprefix(prefix)


def answer_record(fields: dict[str, Any], path: Path, line: int) -> Record:
    """A record whose output is `reasoning_target`: rationale (if any) + 'The answer is X.'."""
    record = parse_record({**fields, "output": f"{ANSWER_PREFIX}{fields['answer']}."}, path, line)
    record.output = reasoning_target(record)
    return record


_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_PAREN_LETTER = re.compile(r"\(([A-Z])\)")


def normalize_short_answer(answer: str) -> str:
    """Short gold answer in canonical form: '(C)' -> 'C', '1,000' -> '1000', else stripped."""
    value = answer.strip()
    if match := _PAREN_LETTER.fullmatch(value):
        return match.group(1)
    if _THOUSANDS.fullmatch(value):
        return value.replace(",", "")
    return value


MAX_CHOICES = 26  # one letter each, A-Z


def letter(index: int) -> str:
    """Option letter for a 0-based index (A, B, ... Z)."""
    if not 0 <= index < MAX_CHOICES:
        raise ValueError(f"no option letter for index {index}")
    return chr(ord("A") + index)


def check_choice_count(count: int, path: Path, line: int, field: str) -> None:
    """Lettered options stop at Z; more would get '[', '\\', ... as labels."""
    if count > MAX_CHOICES:
        raise InputError(f"at most {MAX_CHOICES} choices (A-Z), got {count}", path, line, field)


def multiple_choice_instruction(question: str, choices: Sequence[str]) -> str:
    """Question followed by lettered options, one per line ('A. ...'): one layout for all MC."""
    options = "\n".join(f"{letter(i)}. {choice}" for i, choice in enumerate(choices))
    return f"{question.strip()}\n{options}"
