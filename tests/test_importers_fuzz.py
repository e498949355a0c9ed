"""Fuzzed input for every importer, the format registry, the generic field mapping and the CLI.

Valid rows are generated per format and some are corrupted (a field replaced by JSON of any
shape or deleted, the whole line replaced by other JSON or bytes). The contract: without
corruption the import succeeds; with it, it may still succeed (junk can be valid), or it raises
an InputError naming the file, a corrupted line, and a corrupted field when one was corrupted.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fuzz_helpers import (
    ARROW_COLUMNS,
    BAD_UTF8,
    CELL,
    FEW,
    FUZZ,
    JSON_FINITE,
    JSON_VALUES,
    NONBLANK,
    ONE_LINE,
    TEXT,
    WITH_SURROGATE,
    check_undecodable,
    first_bad_utf8_line,
    fresh,
    outcome,
    run_cli,
)
from hypothesis import event, given
from hypothesis import strategies as st

from taskexpert.errors import InputError
from taskexpert.importers import (
    FORMATS,
    import_all_pools,
    import_dataset,
    importer_options,
    parse_mapping,
)
from taskexpert.records import Record

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("importers_fuzz")


# --- what a valid row of each JSON format looks like --------------------------------------


@st.composite
def _multiple_choice(draw) -> dict[str, Any]:
    choices = draw(st.lists(TEXT, min_size=1, max_size=5))
    gold = draw(st.integers(0, len(choices) - 1))
    return {"query": draw(NONBLANK), "choices": choices, "gold": gold}


@st.composite
def _rocket(draw) -> dict[str, Any]:
    options = draw(st.lists(ONE_LINE, min_size=2, max_size=5))
    labels = [str(i + 1) for i in range(len(options))] if draw(st.booleans()) else LETTERS
    lines = [f"{label}. {option}" for label, option in zip(labels, options)]
    question = draw(ONE_LINE)
    instruction = f"Question: {question} {lines[0]}\n" + "\n".join(lines[1:]) + "\nAnswer:"
    gold = draw(st.integers(0, len(options) - 1))
    explanation = draw(st.none() | TEXT)
    output = lines[gold] + (f"\n\n{explanation}" if explanation else "")
    return {"instruction": instruction, "input": "", "output": output}


def _task(name: str) -> Callable[[int], st.SearchStrategy[dict[str, Any]]]:
    instance = st.fixed_dictionaries({"output": TEXT}, optional={"input": st.none() | TEXT})
    return lambda n: st.fixed_dictionaries(
        {
            "id": st.just(f"{name}_{n}"),
            "instruction": NONBLANK,
            "instances": st.lists(instance, min_size=1, max_size=3),
        }
    )


@dataclass(frozen=True)
class Spec:
    """A JSON format: its file name (the folder default), valid rows, and how it fails."""

    file: str
    row: Callable[[int], st.SearchStrategy[dict[str, Any]]]
    implies: dict[str, set[str]] = field(default_factory=dict)  # corrupted -> may be blamed
    count: Callable[[dict[str, Any]], int] = lambda row: 1
    check: Callable[[Record], bool] = lambda record: True


def _gsm8k_answer(record: Record) -> bool:
    return record.output.endswith(f"The answer is {record.answer}.")


SPECS: dict[str, Spec] = {
    "gsm8k": Spec(
        "train.jsonl",
        lambda n: st.fixed_dictionaries(
            {
                "question": NONBLANK,
                "answer": st.builds(lambda s, x: f"{s}\n#### {x}", TEXT, st.integers()),
            }
        ),
        check=_gsm8k_answer,
    ),
    "arc-challenge": Spec(
        "arc_challenge_test.jsonl",
        lambda n: _multiple_choice(),
        {"choices": {"choices", "gold"}},
        check=lambda r: r.answer in LETTERS and r.source == "arc_challenge",
    ),
    "arc-easy": Spec(
        "arc_easy_test.jsonl",
        lambda n: _multiple_choice(),
        {"choices": {"choices", "gold"}},
        check=lambda r: r.answer in LETTERS,
    ),
    "boolq": Spec(
        "boolq_validation.jsonl",
        lambda n: _multiple_choice(),
        {"choices": {"choices", "gold"}},
        check=lambda r: r.answer in r.choices,
    ),
    "rocket-arc": Spec(
        "arc-c_cot_50shot.jsonl",
        lambda n: _rocket(),
        {"instruction": {"instruction", "output"}},
        check=lambda r: r.answer in LETTERS[: len(r.choices)],
    ),
    "t0": Spec(
        "t0_train.jsonl",
        lambda n: st.fixed_dictionaries(
            {
                "id": st.sampled_from([f"t{n}", n]),
                "prompt": NONBLANK,
                "completion": TEXT,
                "dataset": TEXT,
            }
        ),
        check=lambda r: r.source.startswith("t0/"),
    ),
    "seed-tasks": Spec("seed_tasks.jsonl", _task("seed"), count=lambda row: len(row["instances"])),
    "user-oriented": Spec(
        "user_oriented_instructions.jsonl", _task("user"), count=lambda row: len(row["instances"])
    ),
    "codealpaca": Spec(
        "code_alpaca_2k.json",
        lambda n: st.fixed_dictionaries(
            {"instruction": NONBLANK, "output": TEXT}, optional={"input": st.none() | TEXT}
        ),
    ),
}
NOISE = st.dictionaries(st.sampled_from(["meta", "note", "x"]), JSON_VALUES, max_size=2)
NO_NEWLINE = st.binary(max_size=30).map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" "))


def _draw_rows(data, spec: Spec, listed: bool) -> tuple[list[Any], dict[int, set[str] | None]]:
    """Rows (objects, or raw bytes for JSONL) and, per corrupted line, the fields blamed
    (None: the whole line was replaced, so any field may be named)."""
    rows: list[Any] = []
    bad: dict[int, set[str] | None] = {}
    for n in range(data.draw(st.integers(0, 5), label="rows")):
        row = {**data.draw(NOISE, label="noise"), **data.draw(spec.row(n), label="row")}
        how = data.draw(st.sampled_from(["keep", "keep", "field", "line", "bytes"]), label="how")
        if how == "field":
            keys = data.draw(st.lists(st.sampled_from(sorted(row)), min_size=1, unique=True))
            for key in keys:
                if data.draw(st.booleans(), label=f"delete {key}?"):
                    del row[key]
                else:
                    row[key] = data.draw(JSON_VALUES, label=key)
            bad[n + 1] = set().union(*(spec.implies.get(key, {key}) for key in keys))
        elif how == "line" or (how == "bytes" and listed):
            row = data.draw(JSON_VALUES, label="line")
            bad[n + 1] = None
        elif how == "bytes":
            row = data.draw(NO_NEWLINE, label="bytes")
            bad[n + 1] = None
        rows.append(row)
    return rows, bad


def _write(path: Path, rows: list[Any], listed: bool) -> bytes:
    if listed:
        data = json.dumps(rows).encode()
    else:
        data = b"".join(
            (r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows
        )
    path.write_bytes(data)
    return data


def _check_blame(result: InputError, bad: dict[int, set[str] | None]) -> None:
    """The error is on a corrupted line and names a corrupted field (or a duplicate id)."""
    message = str(result)
    assert bad, f"valid input rejected: {message}"
    if result.line is None:  # ids are checked across lines, as records stream by
        assert result.field == "id" and "duplicate id" in message, message
        return
    assert result.line in bad, (message, bad)
    blamed = bad[result.line]
    if blamed is not None:
        named = result.field or ""
        assert any(named == f or named.startswith(f + ".") for f in blamed), (message, blamed)


@FUZZ
@given(data=st.data(), fmt=st.sampled_from(sorted(SPECS)), as_folder=st.booleans())
def test_json_formats_yield_records_or_blame_a_corrupted_line(base, data, fmt, as_folder):
    spec = SPECS[fmt]
    listed = spec.file.endswith(".json")
    rows, bad = _draw_rows(data, spec, listed)
    path = fresh(base, spec.file)
    _write(path, rows, listed)
    result = outcome(lambda: import_dataset(fmt, path.parent if as_folder else path), path)
    event("error" if isinstance(result, InputError) else "records" if result else "no records")
    if isinstance(result, InputError):
        _check_blame(result, bad)
        return
    assert all(spec.check(record) for record in result), [r.to_dict() for r in result]
    assert len({r.id for r in result}) == len(result)
    if not bad:
        assert len(result) == sum(spec.count(row) for row in rows)


FORMAT_FILES = {fmt: spec.file for fmt, spec in SPECS.items()}
FORMAT_FILES |= {"flan-cot": "aqua_train.tsv", "generic": "table.jsonl"}
GENERIC_SUFFIXES = [".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt"]


@FUZZ
@given(
    fmt=st.sampled_from(sorted(FORMAT_FILES)),
    chunks=st.lists(st.binary(max_size=40) | BAD_UTF8 | JSON_VALUES.map(json.dumps), max_size=5),
    generic_suffix=st.sampled_from(GENERIC_SUFFIXES),
)
def test_any_bytes_for_any_format(base, fmt, chunks, generic_suffix):
    name = FORMAT_FILES[fmt]
    if fmt == "generic":
        name = "table" + generic_suffix
    path = fresh(base, name)
    data = b"\n".join(c if isinstance(c, bytes) else c.encode() for c in chunks)
    path.write_bytes(data)
    result = outcome(lambda: import_dataset(fmt, path), path)
    if isinstance(result, InputError) and result.line is not None:
        assert result.line >= 1
        if not name.endswith(".json"):  # a JSON list's records are numbered, not its lines
            assert result.line <= len(data.splitlines()) + 1
        undecodable = first_bad_utf8_line(data)
        if "not UTF-8" in str(result):
            assert result.line == undecodable


ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252"]


@FUZZ
@given(data=st.data(), fmt=st.sampled_from(sorted(SPECS)), encoding=st.sampled_from(ENCODINGS))
def test_encodings_other_than_utf8_are_named(base, data, fmt, encoding):
    spec = SPECS[fmt]
    rows = [data.draw(spec.row(n)) for n in range(data.draw(st.integers(1, 3)))]
    text = json.dumps(rows, ensure_ascii=False)
    if not spec.file.endswith(".json"):
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    raw = text.encode(encoding, "replace")
    path = fresh(base, spec.file)
    path.write_bytes(raw)
    result = outcome(lambda: import_dataset(fmt, path), path)
    if encoding.startswith("utf-8"):
        assert isinstance(result, list) and len(result) == sum(spec.count(r) for r in rows)
    else:
        check_undecodable(result, raw, encoding)


@FEW
@given(data=st.data(), fmt=st.sampled_from(sorted(SPECS)), size=st.integers(150_000, 300_000))
def test_huge_lines(base, data, fmt, size):
    spec = SPECS[fmt]
    row = data.draw(spec.row(0))
    row["padding"] = "ü" * size  # ignored by every importer, but read as part of the line
    rows = [row, data.draw(spec.row(1))]
    path = fresh(base, spec.file)
    _write(path, rows, spec.file.endswith(".json"))
    result = outcome(lambda: import_dataset(fmt, path), path)
    assert isinstance(result, list), str(result)
    assert len(result) == sum(spec.count(r) for r in rows)


@FUZZ
@given(
    fmt=st.sampled_from(sorted(FORMAT_FILES)),
    text=st.text(" \t\r\n", max_size=6),
    generic_suffix=st.sampled_from(GENERIC_SUFFIXES),
)
def test_empty_and_blank_files(base, fmt, text, generic_suffix):
    name = "table" + generic_suffix if fmt == "generic" else FORMAT_FILES[fmt]
    path = fresh(base, name)
    path.write_text(text)
    result = outcome(lambda: import_dataset(fmt, path), path)
    if name.endswith((".json", ".parquet")):
        assert isinstance(result, InputError)
    elif not isinstance(result, list):  # a blank TSV/CSV line is a row of one empty cell
        assert name.endswith((".tsv", ".csv")) and result.line is not None


# --- FLAN CoT: tab-separated, no header, no quoting ---------------------------------------

FLAN_COLUMNS = ("question", "answer", "rationale")
# A non-empty cell; a backslash could spell the '\\n' escape FLAN's importer turns into a newline.
FLAN_TEXT = CELL.map(lambda s: s.replace("\\", "/").strip() or "x")


@FUZZ
@given(data=st.data(), rows=st.integers(0, 5), as_folder=st.booleans())
def test_flan_cot_cells(base, data, rows, as_folder):
    lines: list[str] = []
    bad: dict[int, set[str] | None] = {}
    for n in range(rows):
        cells = [data.draw(FLAN_TEXT), data.draw(FLAN_TEXT), data.draw(CELL)]
        how = data.draw(st.sampled_from(["keep", "keep", "cell", "count", "line"]))
        if how == "cell":
            column = data.draw(st.integers(0, 2))
            cells[column] = data.draw(st.sampled_from(["", "  ", "\\n"]) | CELL)
            bad[n + 1] = {FLAN_COLUMNS[column]}
        elif how == "count":
            cells = cells[: data.draw(st.integers(1, 2))] + data.draw(st.lists(CELL, max_size=2))
            bad[n + 1] = None
        line = "\t".join(cells)
        if how == "line":
            line = data.draw(st.text(max_size=30).map(lambda s: s.replace("\n", " ")))
            line = line.replace("\r", " ")
            bad[n + 1] = None
        if not line.strip("\t"):
            bad.setdefault(n + 1, None)
        lines.append(line)
    path = fresh(base, data.draw(st.sampled_from(["aqua_train.tsv", "creak_train.tsv"])))
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    result = outcome(lambda: import_dataset("flan-cot", path.parent if as_folder else path), path)
    event("error" if isinstance(result, InputError) else "records" if result else "no records")
    if isinstance(result, InputError):
        _check_blame(result, bad)
        return
    assert all(r.source == f"flan_cot/{path.stem.removesuffix('_train')}" for r in result)
    assert all(r.output.endswith(f"The answer is {r.answer}.") for r in result)
    if not bad:
        assert len(result) == rows


@FEW
@given(size=st.integers(140_000, 300_000))
def test_flan_cot_cell_longer_than_csv_default_limit(base, size):
    path = fresh(base, "gsm8k_train.tsv")
    path.write_text(f"{'q' * size}\t42\t{'r' * size}\n")
    (record,) = import_dataset("flan-cot", path)
    assert record.answer == "42" and len(record.instruction) == size


# --- the generic field mapping ------------------------------------------------------------

MAPPINGS = [
    {},
    {"instruction": "question", "output": "answer"},
    {"instruction": "q", "output": "a", "id": "key", "choices": "opts", "level": "lvl"},
]


def _generic_row(data, mapping: dict[str, str], n: int, tabular: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        mapping.get("instruction", "instruction"): data.draw(NONBLANK),
        mapping.get("output", "output"): data.draw(TEXT),
    }
    if "id" in mapping:  # a Parquet column holds one type
        row[mapping["id"]] = f"r{n}" if tabular else data.draw(st.sampled_from([f"r{n}", n]))
    if "choices" in mapping:
        row[mapping["choices"]] = data.draw(st.lists(TEXT, max_size=3))
    if "level" in mapping:
        present = JSON_FINITE.map(lambda v: 0 if v is None or v == "" else v)  # null: absent
        row[mapping["level"]] = data.draw(st.integers(0, 9) if tabular else present)
    if data.draw(st.booleans()):
        row["rationale"] = data.draw(TEXT)
    row["noise"] = data.draw(st.integers(0, 9) if tabular else JSON_VALUES)
    return row


NEWLINE = re.compile(r"\r\n|\r|\n")  # what ends a line for Python's file reading


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _write_delimited(path: Path, rows: list[dict[str, Any]], delimiter: str) -> list[int]:
    """Write rows under a header of all their columns; returns each row's last physical line."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter)
    writer.writerow(columns)
    ends = []
    for row in rows:
        writer.writerow([_cell(row[c]) if c in row else "" for c in columns])
        ends.append(len(NEWLINE.findall(buffer.getvalue())))
    path.write_text(buffer.getvalue() if rows else "", encoding="utf-8", newline="")
    return ends


@FUZZ
@given(
    data=st.data(),
    mapping=st.sampled_from(MAPPINGS),
    suffix=st.sampled_from([".jsonl", ".json", ".csv", ".tsv"]),
    source=st.none() | TEXT,
)
def test_generic_mapping_on_text_tables(base, data, mapping, suffix, source):
    tabular = suffix in (".csv", ".tsv")
    rows: list[Any] = []
    bad: dict[int, set[str] | None] = {}
    for n in range(data.draw(st.integers(0, 5))):
        row = _generic_row(data, mapping, n, tabular)
        how = data.draw(st.sampled_from(["keep", "keep", "field", "line"]))
        if how == "field":
            column = data.draw(st.sampled_from(sorted(row)))
            if data.draw(st.booleans()) and not tabular:
                del row[column]
            else:
                row[column] = data.draw(JSON_VALUES.map(_cell) if tabular else JSON_VALUES)
            bad[n + 1] = {column}
        elif how == "line" and not tabular:
            row = data.draw(JSON_VALUES)
            bad[n + 1] = None
        rows.append(row)
    path = fresh(base, "table" + suffix)
    if tabular:
        ends = _write_delimited(path, rows, "\t" if suffix == ".tsv" else ",")
        bad = {ends[n - 1]: fields for n, fields in bad.items()}
    else:
        _write(path, rows, suffix == ".json")
    result = outcome(lambda: import_dataset("generic", path, mapping=mapping, source=source), path)
    event("error" if isinstance(result, InputError) else "records" if result else "no records")
    if isinstance(result, InputError):
        _check_blame(result, bad)
        return
    assert all(r.source == (source or r.source) and r.source for r in result)
    if not bad:
        assert len(result) == len(rows)
        if "level" in mapping:
            assert all("level" in r.model_extra for r in result)


@FUZZ
@given(data=st.data(), mapping=st.sampled_from(MAPPINGS), rows=st.integers(1, 4))
def test_generic_mapping_on_parquet(base, data, mapping, rows):
    table = pa.Table.from_pylist(
        [_generic_row(data, mapping, n, tabular=True) for n in range(rows)]
    )
    spoiled = data.draw(st.none() | st.sampled_from(table.column_names))
    if spoiled is not None:  # the whole column of another type, e.g. dates or bytes
        arrow_type, values = ARROW_COLUMNS[data.draw(st.sampled_from(sorted(ARROW_COLUMNS)))]
        cells = pa.array(data.draw(st.lists(values, min_size=rows, max_size=rows)), arrow_type)
        table = table.set_column(table.column_names.index(spoiled), spoiled, cells)
    path = fresh(base, "table.parquet")
    pq.write_table(table, path)
    result = outcome(lambda: import_dataset("generic", path, mapping=mapping), path)
    event("error" if isinstance(result, InputError) else "records")
    if isinstance(result, InputError):
        assert spoiled is not None, str(result)
        duplicate = result.line is None and "duplicate id" in str(result)
        assert result.field == spoiled or (duplicate and spoiled == "key"), str(result)
    else:
        assert len(result) == rows


POOL_FILES = [
    "flan-v2-cot/aqua_train.tsv",
    "self-instruct/t0_train_50k_first60_per_template.jsonl",
    "self-instruct/seed_tasks.jsonl",
    "self-instruct/user_oriented_instructions.jsonl",
    "codealpaca/code_alpaca_2k.json",
]


@FEW
@given(
    pool_file=st.sampled_from(POOL_FILES),
    chunks=st.lists(st.binary(max_size=30) | JSON_VALUES.map(json.dumps), min_size=1, max_size=4),
)
def test_all_pools_with_one_fuzzed_file(base, pool_file, chunks):
    root = fresh(base, "data")
    shutil.copytree(FIXTURES, root)
    fuzzed = root / pool_file
    fuzzed.write_bytes(b"\n".join(c if isinstance(c, bytes) else c.encode() for c in chunks))
    try:
        records = list(import_all_pools(root))
    except InputError as exc:
        assert Path(exc.path) == fuzzed or ("across pools" in str(exc) and exc.path == root)
        return
    assert records and all(isinstance(record, Record) for record in records)


# --- the registry, --map parsing and the CLI ------------------------------------------------


@FUZZ
@given(
    fmt=st.sampled_from(sorted(FORMATS)) | st.text(max_size=12),
    options=st.dictionaries(
        st.sampled_from(["split", "mapping", "source", "lettered", "name"]) | st.text(max_size=6),
        st.just("x"),
        max_size=2,
    ),
)
def test_registry_rejects_unknown_formats_and_options_before_reading(base, fmt, options):
    try:
        records = import_dataset(fmt, base / "never-read", **options)
    except InputError as exc:
        assert exc.path is None
        if fmt not in FORMATS:
            assert exc.field == "format" and repr(fmt) in str(exc)
        else:
            assert exc.field in options and exc.field not in importer_options(fmt)
        return
    assert fmt in FORMATS and set(options) <= set(importer_options(fmt))
    assert iter(records) is records  # a stream: nothing is read until it is iterated


@FUZZ
@given(
    items=st.lists(st.text(max_size=10) | st.sampled_from(["a=b", "a = c", "=x", "y=", "b=a=c"]))
)
def test_parse_mapping(items):
    expected: dict[str, str] | None = {}
    for item in items:
        target, sep, column = (part.strip() for part in item.partition("="))
        if not sep or not target or not column or target in expected:
            expected = None
            break
        expected[target] = column
    try:
        mapping = parse_mapping(items)
    except InputError as exc:
        assert expected is None and exc.field == "--map" and exc.path is None
        return
    assert mapping == expected


BAD_LINES = st.sampled_from(
    [
        b"caf\xe9\n",
        b"[1, 2]\n",
        b'{"question": 3, "answer": "x"}\n',
        b'{"question": "q"}\n',
        b"[" * 5000 + b"\n",
        b'{"question": "q", "answer": ' + b"9" * 5000 + b"}\n",
        b'{"question": "q\\udc00", "answer": "a"}\n',
    ]
)


@FEW
@given(
    good=st.lists(st.fixed_dictionaries({"question": NONBLANK, "answer": TEXT}), max_size=3),
    bad_line=BAD_LINES,
    fmt=st.sampled_from(["generic", "gsm8k"]),
)
def test_cli_prints_one_error_line_and_writes_nothing(base, good, bad_line, fmt):
    src = fresh(base, "train.jsonl")
    valid = [{**row, "answer": row["answer"] + "\n#### 1"} for row in good]
    src.write_bytes(b"".join(json.dumps(row).encode() + b"\n" for row in valid) + bad_line)
    out_dir = src.parent / "out"
    argv = ["import", fmt, str(src), "--out", str(out_dir / "records.jsonl")]
    if fmt == "generic":
        argv += ["--map", "instruction=question", "--map", "output=answer"]
    code, message = run_cli(argv)
    assert code == 1
    assert message.startswith("error: ") and message.count("\n") == 1, message
    assert f"{src}:{len(good) + 1}" in message
    assert not out_dir.exists() or not any(out_dir.iterdir())


@FEW
@given(bad=WITH_SURROGATE, option=st.sampled_from(["--map", "--source"]))
def test_cli_rejects_arguments_that_are_not_unicode(base, bad, option):
    """Bytes in argv that are not UTF-8 arrive as lone surrogates and fail only on write-out."""
    src = fresh(base, "table.jsonl")
    src.write_text('{"instruction": "q", "output": "a"}\n')
    out = src.parent / "out.jsonl"
    value = f"{bad}=instruction" if option == "--map" else bad
    code, message = run_cli(["import", "generic", str(src), "--out", str(out), option, value])
    assert code == 1 and message.startswith("error: ") and message.count("\n") == 1, message
    assert "not valid Unicode" in message and not out.exists()
    with pytest.raises(InputError, match="not valid Unicode"):
        import_dataset("generic", src, source=bad)
