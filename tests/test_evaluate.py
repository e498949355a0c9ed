import pytest

from taskexpert.errors import InputError
from taskexpert.evaluate import evaluate_exact_match, gold_answer
from taskexpert.lm import generate_greedy
from taskexpert.prompts import format_prompt
from taskexpert.records import Record


def test_exact_match_counts_what_the_model_generates(char_tokenizer, tiny_llama):
    records = [
        Record(id="a", instruction="one", output="x", answer="7"),
        Record(id="b", instruction="two", output="x", answer="yes"),
    ]
    result = evaluate_exact_match(tiny_llama, char_tokenizer, records, max_new_tokens=6)
    assert result["n"] == 2 and len(result["predictions"]) == 2
    raw = generate_greedy(
        tiny_llama, char_tokenizer, [format_prompt(r, char_tokenizer) for r in records], 6
    )
    assert [p["generated"] for p in result["predictions"]] == raw
    assert [p["kind"] for p in result["predictions"]] == ["number", "yesno"]
    assert result["exact_match"] == sum(p["correct"] for p in result["predictions"]) / 2


def test_a_model_that_says_the_gold_answer_scores_one(char_tokenizer, tiny_llama, monkeypatch):
    records = [Record(id=str(i), instruction=f"q{i}", output="", answer=str(i)) for i in range(3)]
    fake = [f"Step.\nThe answer is {i}." for i in range(2)] + ["The answer is 9."]
    monkeypatch.setattr("taskexpert.evaluate.generate_greedy", lambda *a, **k: fake)
    result = evaluate_exact_match(tiny_llama, char_tokenizer, records)
    assert [p["correct"] for p in result["predictions"]] == [True, True, False]
    assert result["exact_match"] == pytest.approx(2 / 3, rel=1e-6)
    assert result["predictions"][2]["prediction"] == "9"


def test_gold_answer_falls_back_to_output_and_errors_when_missing():
    assert gold_answer(Record(id="1", instruction="q", output="The answer is B."), "letter") == "B"
    with pytest.raises(InputError, match="no gold answer"):
        gold_answer(Record(id="2", instruction="q", output="nothing here"), "number")
