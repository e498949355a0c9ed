"""RecordFile: the records of a JSONL file by index, equal to load_records, errors alike."""

import json
import os

import pytest

from taskexpert.errors import InputError
from taskexpert.record_file import RecordFile, open_records, take
from taskexpert.records import Record, load_records, write_records


def _rows(n: int) -> list[dict]:
    return [
        {"id": f"r{i}", "instruction": f"q {i} é", "output": f"a {i}", "extra": {"k": i}}
        for i in range(n)
    ]


def _write(path, rows, *, bom=False, blank_every=0, crlf=False):
    end = "\r\n" if crlf else "\n"
    lines = []
    for i, row in enumerate(rows):
        if blank_every and i % blank_every == 0:
            lines.append("   ")
        lines.append(json.dumps(row, ensure_ascii=False))
    text = end.join(lines) + end
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


@pytest.mark.parametrize("layout", [{}, {"bom": True}, {"blank_every": 3}, {"crlf": True}])
def test_every_access_equals_load_records(tmp_path, layout):
    path = _write(tmp_path / "pool.jsonl", _rows(10), **layout)
    whole = load_records(path)
    table = RecordFile(path)
    assert len(table) == 10
    assert list(table) == whole
    assert [table[i] for i in range(10)] == whole
    assert table[-1] == whole[-1] and table[2:7:2] == whole[2:7:2]
    assert take(table, [9, 0, 4]) == [whole[9], whole[0], whole[4]]
    assert take(whole, [9, 0, 4]) == [whole[9], whole[0], whole[4]]
    with pytest.raises(IndexError):
        table[10]


def test_bad_lines_are_refused_on_opening_as_load_records_refuses_them(tmp_path):
    rows = [json.dumps(r) for r in _rows(3)]
    cases = {
        "malformed": rows[0] + '\n{"id": "x", "instruction": "q"\n',
        "missing field": rows[0] + '\n{"id": "x", "output": "a"}\n',
        "duplicate": rows[0] + "\n" + rows[1] + "\n" + rows[0] + "\n",
        "empty": "\n\n",
    }
    for name, text in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.jsonl"
        path.write_text(text)
        with pytest.raises(InputError) as theirs:
            load_records(path)
        with pytest.raises(InputError) as ours:
            RecordFile(path)
        assert str(ours.value) == str(theirs.value), name


def test_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"id": "1", "instruction": "q", "output": "a"}\n' + "é".encode("latin-1"))
    with pytest.raises(InputError) as info:
        RecordFile(path)
    assert info.value.line == 2 and "not UTF-8" in str(info.value)


def test_a_file_changed_after_opening_is_refused(tmp_path):
    path = _write(tmp_path / "pool.jsonl", _rows(4))
    table = RecordFile(path)
    write_records(path, [Record(id="new", instruction="q", output="a")])
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with pytest.raises(InputError, match="changed since it was opened"):
        table[0]


def test_json_and_parquet_load_whole(tmp_path):
    records = [Record(**row) for row in _rows(3)]
    path = tmp_path / "pool.json"
    path.write_text(json.dumps([r.model_dump(exclude_none=True) for r in records]))
    opened = open_records(path)
    assert isinstance(opened, list) and opened == load_records(path)
    assert isinstance(open_records(_write(tmp_path / "p.jsonl", _rows(2))), RecordFile)
