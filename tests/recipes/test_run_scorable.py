"""A test file without what its scoring needs is refused before any training, naming the
file, the record and the field."""

from __future__ import annotations

import pytest

from taskexpert.errors import InputError
from taskexpert.recipes.run_split import check_scorable
from taskexpert.records import Record


def _mc(**changes) -> Record:
    fields = {"id": "q1", "instruction": "Q?\nA. x\nB. y", "output": "The answer is B.",
              "answer": "B", "choices": ["x", "y"]}  # fmt: skip
    return Record.model_validate({**fields, **changes})


def test_good_records_pass(tmp_path):
    plain = Record(id="n", instruction="2+2?", output="The answer is 4.", answer="4")
    check_scorable([_mc(), plain], tmp_path / "t.jsonl", "auto")


@pytest.mark.parametrize(
    ("record", "metric", "field", "message"),
    [
        (_mc(answer="C"), "auto", "answer", "neither an option letter nor one of the choices"),
        (_mc(choices=["x", " "]), "auto", "choices", "choice 1 is empty"),
        (Record(id="q1", instruction="Q?", output="The answer is 4.", answer="4"),
         "multiple_choice", "choices", "has no choices"),
    ],
)  # fmt: skip
def test_unscorable_records_name_file_record_and_field(tmp_path, record, metric, field, message):
    path = tmp_path / "test.jsonl"
    ok = Record(id="ok", instruction="2+2?", output="The answer is 4.", answer="4")
    records = [ok, record] if metric != "multiple_choice" else [record]
    with pytest.raises(InputError, match=message) as err:
        check_scorable(records, path, metric)
    assert err.value.path == path and err.value.field == field
    assert "'q1'" in str(err.value)
