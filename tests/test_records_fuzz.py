"""Fuzzed input for the record reader (records.py) and its atomic writer (io.py).

Each test states the reader's contract against an independent oracle: the records come back
valid, or an InputError names the file, the first bad line and one of that line's bad fields.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fuzz_helpers import (
    ARROW_COLUMNS,
    BAD_UTF8,
    FEW,
    FUZZ,
    JSON_FINITE,
    JSON_VALUES,
    NONBLANK,
    TEXT,
    WITH_SURROGATE,
    check_undecodable,
    dumps_line,
    first_bad_utf8_line,
    fresh,
    outcome,
)
from hypothesis import given
from hypothesis import strategies as st

from taskexpert.errors import InputError
from taskexpert.records import Record, load_records, read_records, write_records


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("records_fuzz")


OPTIONAL_TEXT = st.none() | TEXT
VALID_RECORD = st.fixed_dictionaries(
    {"id": st.text(max_size=8) | st.integers(), "instruction": NONBLANK, "output": TEXT},
    optional={
        "input": TEXT,
        "answer": OPTIONAL_TEXT,
        "rationale": OPTIONAL_TEXT,
        "source": OPTIONAL_TEXT,
        "choices": st.none() | st.lists(TEXT, max_size=3),
        "extra": JSON_VALUES,
    },
)
# Every field either absent, right, of the wrong shape, or holding a lone surrogate.
RECORD_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=8) | st.integers() | JSON_VALUES,
        "instruction": NONBLANK | JSON_VALUES | WITH_SURROGATE,
        "input": TEXT | JSON_VALUES,
        "output": TEXT | JSON_VALUES,
        "answer": OPTIONAL_TEXT | JSON_VALUES,
        "choices": st.lists(TEXT | JSON_VALUES, max_size=3) | JSON_VALUES,
        "notes": JSON_VALUES | st.lists(WITH_SURROGATE, min_size=1, max_size=2),
    },
)
LINE_VALUES = VALID_RECORD | RECORD_LIKE | JSON_VALUES


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(char) <= 0xDFFF for char in text)


def _surrogate_paths(value: Any, where: str = "") -> set[str | None]:
    if isinstance(value, str):
        return {where or None} if _has_surrogate(value) else set()
    found: set[str | None] = set()
    if isinstance(value, dict | list):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            name = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and _has_surrogate(key):
                found.add(name)
            found |= _surrogate_paths(child, name)
    return found


def _problems(obj: Any) -> set[str | None]:
    """The fields that make a decoded line invalid (None: the line as a whole); empty if valid."""
    bad = _surrogate_paths(obj)
    if not isinstance(obj, dict):
        return bad | {None}
    value = obj.get("id")
    if "id" not in obj or isinstance(value, bool) or not isinstance(value, str | int):
        bad.add("id")
    value = obj.get("instruction")
    if not isinstance(value, str) or not value.strip():
        bad.add("instruction")
    if not isinstance(obj.get("output"), str):
        bad.add("output")
    if "input" in obj and not isinstance(obj["input"], str):
        bad.add("input")
    for key in ("answer", "rationale", "source"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            bad.add(key)
    choices = obj.get("choices")
    if choices is not None:
        if not isinstance(choices, list):
            bad.add("choices")
        else:
            bad |= {f"choices.{i}" for i, c in enumerate(choices) if not isinstance(c, str)}
    return bad


@FUZZ
@given(
    values=st.lists(LINE_VALUES, max_size=6),
    ascii_only=st.booleans(),
    blank_lines=st.lists(st.integers(0, 6), max_size=2),
)
def test_json_of_any_shape_yields_records_or_names_line_and_field(
    base, values, ascii_only, blank_lines
):
    lines = [dumps_line(value, ascii_only) for value in values]
    numbers = list(range(1, len(values) + 1))
    for at in sorted(blank_lines, reverse=True):  # a blank line shifts the numbers after it
        at = min(at, len(lines))
        lines.insert(at, b"  \n")
        numbers = [n + (i >= at) for i, n in enumerate(numbers)]
    path = fresh(base, "records.jsonl")
    data = b"".join(lines)
    path.write_bytes(data)
    result = outcome(lambda: read_records(path), path)
    undecodable = first_bad_utf8_line(data)
    bad_lines = [(n, _problems(v)) for n, v in zip(numbers, values) if _problems(v)]
    first_bad = bad_lines[0] if bad_lines else None
    if isinstance(result, list):
        assert undecodable is None and first_bad is None
        assert len(result) == len(values)
        return
    if undecodable is not None and "not UTF-8" in str(result):
        assert result.line == undecodable
        return
    assert first_bad is not None, str(result)
    line, fields = first_bad
    assert result.line == line, str(result)
    assert result.field in fields or (
        "choices" in fields and (result.field or "").startswith("choices.")
    ), (str(result), fields)


@FUZZ
@given(
    chunks=st.lists(st.binary(max_size=40) | VALID_RECORD.map(dumps_line), max_size=5),
    suffix=st.sampled_from([".jsonl", ".json", ".parquet", ".txt", ".JSONL"]),
)
def test_arbitrary_bytes_never_escape_as_another_exception(base, chunks, suffix):
    path = fresh(base, "blob" + suffix)
    data = b"".join(chunks)
    path.write_bytes(data)
    result = outcome(lambda: load_records(path, allow_empty=True), path)
    if isinstance(result, InputError) and result.line is not None:
        assert result.line >= 1
        if suffix.lower() == ".jsonl":
            assert result.line <= len(data.splitlines()) + 1


ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252"]


@FUZZ
@given(
    records=st.lists(VALID_RECORD, min_size=1, max_size=4),
    encoding=st.sampled_from(ENCODINGS),
    suffix=st.sampled_from([".jsonl", ".json"]),
)
def test_text_encodings_other_than_utf8_are_named(base, records, encoding, suffix):
    if suffix == ".json":
        text = json.dumps(records, ensure_ascii=False)
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    data = text.encode(encoding, "replace")
    path = fresh(base, "encoded" + suffix)
    path.write_bytes(data)
    result = outcome(lambda: read_records(path), path)
    if encoding.startswith("utf-8"):
        # compared as JSON text: NaN (valid records may carry it) never equals itself
        got = json.dumps([r.to_dict() for r in result], sort_keys=True)
        assert got == json.dumps([Record(**r).to_dict() for r in records], sort_keys=True)
    else:
        check_undecodable(result, data, encoding)


@FUZZ
@given(
    head=st.lists(VALID_RECORD, max_size=3),
    bad=BAD_UTF8,
    tail=st.lists(VALID_RECORD, max_size=2),
)
def test_invalid_utf8_names_its_line_and_byte(base, head, bad, tail):
    lines = [dumps_line(r) for r in head] + [b'{"id": "x", "instruction": "' + bad + b'"}\n']
    lines += [dumps_line(r) for r in tail]
    path = fresh(base, "mixed.jsonl")
    path.write_bytes(b"".join(lines))
    result = outcome(lambda: read_records(path), path)
    assert isinstance(result, InputError) and "not UTF-8" in str(result)
    assert result.line == len(head) + 1
    assert "0x" in str(result) and "column" in str(result)


@FEW
@given(
    size=st.integers(150_000, 400_000),
    where=st.sampled_from(["instruction", "output", "extra"]),
    junk=st.booleans(),
)
def test_huge_lines(base, size, where, junk):
    big = {"id": "big", "instruction": "q", "output": "a", where: "é" * size}
    lines = [dumps_line({"id": "0", "instruction": "q", "output": "a"}), dumps_line(big, False)]
    if junk:
        lines.append(b"{" * size + b"\n")
    path = fresh(base, "huge.jsonl")
    path.write_bytes(b"".join(lines))
    result = outcome(lambda: load_records(path), path)
    if junk:
        assert isinstance(result, InputError) and result.line == 3
        assert "malformed JSON" in str(result)
    else:
        assert len(getattr(result[1], where)) == size


@FUZZ
@given(
    text=st.text(" \t\r\n\x0b\x0c\x1c\x85\xa0\u2028\u3000", max_size=12),
    suffix=st.sampled_from([".jsonl", ".json"]),
    listed=st.booleans(),
)
def test_empty_and_blank_files(base, text, suffix, listed):
    path = fresh(base, "empty" + suffix)
    if suffix == ".json" and listed:  # JSON's own whitespace only
        text = "".join(c for c in text if c in " \t\r\n") + "[]"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_records(path)
    assert Path(info.value.path) == path
    if suffix == ".jsonl" or listed:
        assert info.value.reason == "no records" and info.value.line is None
        assert load_records(path, allow_empty=True) == []
    else:
        assert "malformed JSON" in str(info.value)


@FUZZ
@given(
    depth=st.integers(1, 3000) | st.just(200_000),
    opener=st.sampled_from(["[", '{"k": ']),
    digits=st.integers(1, 6000),
)
def test_deep_nesting_and_long_numbers(base, depth, opener, digits):
    closer = "]" if opener == "[" else "}"
    nested = opener * depth + "0" + closer * depth
    number = "7" * digits
    head = '{"id": "0", "instruction": "q", "output": "a"}\n'
    for name, value in (("deep", nested), ("long", number)):
        for suffix in (".jsonl", ".json"):
            path = fresh(base, name + suffix)
            row = '{"id": "1", "instruction": "q", "output": "a", "x": ' + value + "}"
            path.write_text(head + row + "\n" if suffix == ".jsonl" else f"[{row}]")
            result = outcome(lambda p=path: load_records(p), path)
            too_deep = name == "deep" and depth > 100_000  # hypothesis lifts the stack limit
            too_long = name == "long" and digits > 4300  # Python's int-from-text limit
            fine = (name == "deep" and depth <= 100) or (name == "long" and digits <= 4300)
            if isinstance(result, InputError):
                assert "malformed JSON" in str(result) and not fine, str(result)
                assert result.line == (2 if suffix == ".jsonl" else None)
            else:
                assert not (too_deep or too_long)
                assert len(result) == (2 if suffix == ".jsonl" else 1)


ROUND_TRIP_RECORD = st.builds(
    lambda record, extra: {**record, "id": str(record["id"]), "extra": extra},
    VALID_RECORD,
    JSON_FINITE,  # NaN would not compare equal to itself after the trip
)


@FUZZ
@given(
    records=st.lists(ROUND_TRIP_RECORD, max_size=5, unique_by=lambda r: r["id"]),
    fail_at=st.none() | st.integers(0, 5),
)
def test_write_read_round_trip_and_failed_write_leaves_nothing(base, records, fail_at):
    path = fresh(base, "out.jsonl")
    folder = path.parent
    previous = b'{"id": "old", "instruction": "q", "output": "a"}\n'
    path.write_bytes(previous)

    def stream():
        for index, record in enumerate(records):
            if index == fail_at:
                raise RuntimeError("stage failed mid-write")
            yield Record(**record)

    if fail_at is not None and fail_at < len(records):
        with pytest.raises(RuntimeError):
            write_records(path, stream())
        assert path.read_bytes() == previous and list(folder.iterdir()) == [path]
        return
    assert write_records(path, stream()) == len(records)
    assert list(folder.iterdir()) == [path]
    back = load_records(path, allow_empty=True)
    assert [r.to_dict() for r in back] == [Record(**r).to_dict() for r in records]


RIGHT_KIND = {"id": "int64", "instruction": "large_string", "output": "string", "input": "string"}
RIGHT_KIND |= {"answer": "string", "choices": "list"}
OPTIONAL_COLUMNS = ["input", "answer", "choices", "extra", "more"]


@FUZZ
@given(data=st.data(), rows=st.integers(0, 4))
def test_parquet_of_any_column_types(base, data, rows):
    names = ["id", "instruction", "output"]
    names += data.draw(st.lists(st.sampled_from(OPTIONAL_COLUMNS), unique=True, max_size=3))
    dropped = data.draw(st.none() | st.sampled_from(names))
    columns = {}
    for name in names:
        kind = data.draw(st.sampled_from(sorted(ARROW_COLUMNS)), label=name)
        if name in RIGHT_KIND and data.draw(st.integers(0, 3), label="right type?"):
            kind = RIGHT_KIND[name]  # mostly the right type, so that whole rows are often valid
        arrow_type, values = ARROW_COLUMNS[kind]
        if not data.draw(st.integers(0, 3), label="nulls?"):
            values = values | st.none()
        cells = data.draw(st.lists(values, min_size=rows, max_size=rows))
        columns[name] = pa.array(cells, arrow_type)
    columns.pop(dropped, None)
    path = fresh(base, "table.parquet")
    pq.write_table(pa.table(columns), path)
    result = outcome(lambda: read_records(path), path)
    if isinstance(result, InputError):
        assert result.line is not None and 1 <= result.line <= rows, str(result)
        assert (result.field or "").split(".")[0] in names, str(result)
    else:
        assert len(result) == rows


@FUZZ
@given(cut=st.integers(0, 10_000), junk=st.binary(max_size=64), magic=st.booleans())
def test_corrupt_parquet_is_an_input_error(base, cut, junk, magic):
    good = fresh(base, "good.parquet")
    pq.write_table(pa.table({"id": ["1"], "instruction": ["q"], "output": ["a"]}), good)
    data = good.read_bytes()
    data = data[: cut % len(data)] + (b"PAR1" + junk + b"PAR1" if magic else junk)
    path = fresh(base, "bad.parquet")
    path.write_bytes(data)
    result = outcome(lambda: load_records(path), path)
    assert isinstance(result, InputError) or [r.id for r in result] == ["1"]
