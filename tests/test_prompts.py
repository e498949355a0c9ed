import pytest

from taskexpert.prompts import extract_answer, infer_answer_kind, is_correct, normalize_answer
from taskexpert.records import Record


@pytest.mark.parametrize(
    "text, kind, expected",
    [
        ("48/2 = 24. 48+24 = 72\n#### 72", "number", "72"),
        ("So 3 + 4 = 7. The answer is 1,200.", "number", "1200"),
        ("we get 5 then 12", "number", "12"),
        ("The answer is (C).", "letter", "C"),
        ("B. wet palms", "letter", "B"),
        ("Yes, because the passage says so.", "yesno", "yes"),
        ("The answer is False", "yesno", "no"),
        ("The answer is ABC 12.", "text", "abc 12"),
        ("no digits here", "number", None),
    ],
)
def test_extract_answer(text, kind, expected):
    assert extract_answer(text, kind) == expected


def test_infer_kind_and_match():
    assert infer_answer_kind(Record(id="1", instruction="q", output="o", answer="C")) == "letter"
    assert infer_answer_kind(Record(id="1", instruction="q", output="o", answer="18")) == "number"
    assert infer_answer_kind(Record(id="1", instruction="q", output="o", answer="no")) == "yesno"
    assert is_correct("The answer is 18.0", "18", "number")
    assert not is_correct("The answer is 17", "18", "number")
    assert normalize_answer("2.50", "number") == "2.5"
