import json

import pytest

from taskexpert.errors import InputError
from taskexpert.records import Record, load_records, read_records, write_records


def test_round_trip_keeps_extra_fields(tmp_path):
    path = tmp_path / "r.jsonl"
    write_records(path, [Record(id="1", instruction="q", output="a", answer="a", extra=5)])
    (back,) = load_records(path)
    assert back.answer == "a" and back.model_extra == {"extra": 5}


@pytest.mark.parametrize(
    "line, field, message",
    [
        ('{"id": "1", "output": "x"}', "instruction", "missing required field"),
        ('{"id": "1", "instruction": "  ", "output": "x"}', "instruction", "must not be empty"),
        ('{"id": "1", "instruction": "q"', None, "malformed JSON"),
        ("[1, 2]", None, "expected a JSON object"),
    ],
)
def test_bad_line_names_file_line_and_field(tmp_path, line, field, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "0", "instruction": "q", "output": "a"}) + "\n" + line + "\n")
    with pytest.raises(InputError) as info:
        list(read_records(path))
    assert info.value.line == 2 and info.value.field == field
    assert message in str(info.value) and str(path) in str(info.value)


def test_duplicate_ids_and_empty_file_are_errors(tmp_path):
    path = tmp_path / "dup.jsonl"
    row = json.dumps({"id": "7", "instruction": "q", "output": "a"})
    path.write_text(row + "\n" + row + "\n")
    with pytest.raises(InputError, match="duplicate id"):
        load_records(path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match="no records"):
        load_records(empty)


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "out.jsonl"

    def broken():
        yield Record(id="1", instruction="q", output="a")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_records(path, broken())
    assert list(tmp_path.iterdir()) == []
