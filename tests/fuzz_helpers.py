"""Strategies and checks shared by the fuzz tests of the record reader and the importers.

Every fuzz test asserts one contract: an input yields valid records, or an `InputError` that
names the file, and the line and field where the reader can know them; never another exception.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import io
import json
import re
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from unittest import mock

import pyarrow as pa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from taskexpert import cli
from taskexpert.errors import InputError
from taskexpert.records import Record

# Fast enough that all fuzz tests together stay well under 30 s; files are tiny on purpose.
_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
FUZZ = settings(max_examples=40, **_COMMON)
FEW = settings(max_examples=8, **_COMMON)

TEXT = st.text(max_size=20)
NONBLANK = TEXT.map(lambda s: s if s.strip() else s + "q")
ONE_LINE = st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=15).map(
    lambda s: s.strip() or "w"
)  # a ROCKET prompt splits on '\n' and strips each option
CELL = st.text(st.characters(codec="utf-8", exclude_characters="\t\r\n"), max_size=15)
LONE_SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
WITH_SURROGATE = st.tuples(TEXT, LONE_SURROGATE, TEXT).map("".join)


def _json(floats: st.SearchStrategy[float]) -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | floats | TEXT
    return st.recursive(
        scalars,
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(TEXT, kids, max_size=3),
        max_leaves=8,
    )


JSON_VALUES = _json(st.floats())  # NaN and infinities included: Python's json takes them
JSON_FINITE = _json(st.floats(allow_nan=False))
# Bytes that are not UTF-8 on their own: latin-1 text, a UTF-16 BOM, a stray continuation byte.
BAD_UTF8 = st.sampled_from([b"caf\xe9", b"\xff\xfe{", b"\x80", b"\xed\xa0\x80", b"\xc3("])

# Parquet column types, some with no JSON form (dates, decimals, bytes), and their values.
ARROW_COLUMNS: dict[str, tuple[pa.DataType, st.SearchStrategy]] = {
    "string": (pa.string(), TEXT),
    "large_string": (pa.large_string(), NONBLANK),
    "int64": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "float64": (pa.float64(), st.floats()),
    "bool": (pa.bool_(), st.booleans()),
    "binary": (pa.binary(), st.binary(max_size=6)),
    "list": (pa.list_(pa.string()), st.lists(TEXT, max_size=3)),
    "timestamp": (pa.timestamp("s"), st.datetimes(datetime.datetime(1970, 1, 1))),
    "date": (pa.date32(), st.dates(datetime.date(1970, 1, 1))),
    "decimal": (pa.decimal128(5, 2), st.decimals(-999, 999, places=2).map(decimal.Decimal)),
    "struct": (pa.struct([("a", pa.int64())]), st.fixed_dictionaries({"a": st.integers(0, 9)})),
    "null": (pa.null(), st.none()),
}


def run_cli(argv: list[str]) -> tuple[int, str]:
    """The console entry point as a user runs it: (exit code, what it printed on stderr)."""
    stderr = io.StringIO()
    with mock.patch.object(sys, "argv", ["taskexpert", *argv]), contextlib.redirect_stderr(stderr):
        try:
            cli.main()
        except SystemExit as exc:
            return (exc.code if isinstance(exc.code, int) else 1), stderr.getvalue()
    return 0, stderr.getvalue()


def fresh(base: Path, name: str) -> Path:
    """A path named `name` in a new folder: hypothesis reuses one tmp dir for all examples."""
    return Path(tempfile.mkdtemp(dir=base)) / name


def check_record(record: Record) -> None:
    """What every stage downstream relies on, including that the record can be written out."""
    assert isinstance(record, Record)
    assert isinstance(record.id, str) and isinstance(record.output, str)
    assert isinstance(record.instruction, str) and record.instruction.strip()
    assert record.choices is None or all(isinstance(c, str) for c in record.choices)
    json.dumps(record.to_dict(), ensure_ascii=False).encode("utf-8")


def outcome(read: Callable[[], Iterable[Record]], path: Path) -> list[Record] | InputError:
    """The records `read` yields, all checked, or the InputError it raised (naming `path`)."""
    try:
        records = list(read())
    except InputError as exc:
        assert exc.path is not None and Path(exc.path) == path, str(exc)
        assert str(path) in str(exc) and "\n" not in str(exc)
        return exc
    for record in records:
        check_record(record)
    return records


def first_bad_utf8_line(data: bytes) -> int | None:
    """1-based line of the first bytes that are not UTF-8 (lines end at \\r\\n, \\r or \\n)."""
    for number, raw in enumerate(re.split(rb"\r\n|\r|\n", data), start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return number
    return None


def check_undecodable(result: list[Record] | InputError, data: bytes, encoding: str) -> None:
    """A file in another encoding: UTF-16/32 is named on line 1, bytes that are not UTF-8
    are reported on the line that holds the first of them."""
    if encoding in ("utf-16", "utf-32"):
        assert isinstance(result, InputError) and result.line == 1
        assert f"not UTF-8 text ({encoding.upper()}; save it as UTF-8)" in str(result)
    elif first_bad_utf8_line(data) is not None:
        assert isinstance(result, InputError) and "not UTF-8" in str(result)
        assert result.line == first_bad_utf8_line(data)


def dumps_line(value: Any, ascii_only: bool = True) -> bytes:
    """One JSONL line; with ascii_only=False a lone surrogate goes out as raw (invalid) bytes."""
    return (json.dumps(value, ensure_ascii=ascii_only) + "\n").encode("utf-8", "surrogatepass")
