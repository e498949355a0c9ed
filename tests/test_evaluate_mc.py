import pytest
import torch

from taskexpert.errors import InputError
from taskexpert.evaluate import (
    choice_labels,
    choice_logprobs,
    evaluate_model,
    evaluate_multiple_choice,
    gold_choice,
    option_continuations,
)
from taskexpert.prompts import format_prompt
from taskexpert.records import Record


def lettered(i="q", answer="B"):
    return Record(
        id=i,
        instruction="Pick the sum of 2 + 2.\nA) 3\nB) 4\nC) 5",
        output=f"The answer is {answer}.",
        answer=answer,
        choices=["3", "4", "5"],
    )


def named(i="n", answer="Yes"):
    return Record(
        id=i, instruction="Is water wet?", output="x", answer=answer, choices=["no", "yes"]
    )


def test_labels_and_gold_for_lettered_and_named_options():
    assert choice_labels(lettered()) == ["A", "B", "C"]
    assert gold_choice(lettered(answer="(c)")) == 2
    assert option_continuations(lettered()) == [f"The answer is {x}." for x in "ABC"]
    assert choice_labels(named()) == ["no", "yes"]
    assert gold_choice(named()) == 1  # matched case-insensitively
    assert option_continuations(named(), "text") == ["no", "yes"]
    assert option_continuations(named()) == ["The answer is no.", "The answer is yes."]


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (named(answer="maybe"), "answer"),
        (Record(id="e", instruction="q", output="x", answer="a", choices=["a", " "]), "choices"),
        (Record(id="m", instruction="q", output="x", choices=["a", "b"]), "answer"),
        (Record(id="z", instruction="q", output="x", answer="D", choices=["a", "b"]), "answer"),
    ],
)
def test_bad_multiple_choice_records_name_the_record_and_field(record, field):
    with pytest.raises(InputError, match=repr(record.id)) as info:
        gold_choice(record)
    assert info.value.field == field


def test_option_logprobs_match_a_direct_forward_pass(char_tokenizer, tiny_llama):
    record = lettered()
    ((s0, n0), *_rest) = choice_logprobs(tiny_llama, char_tokenizer, [record])[0]
    prompt = char_tokenizer(format_prompt(record, char_tokenizer))["input_ids"]
    option = char_tokenizer("The answer is A.", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = tiny_llama(torch.tensor([prompt + option])).logits[0].float()
    logp = logits.log_softmax(-1)
    expected = sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(option))
    assert n0 == len(option)  # no EOS: options are scored as they are, not as full outputs
    assert s0 == pytest.approx(expected, abs=1e-4)


def test_batching_does_not_change_the_scores(char_tokenizer, tiny_llama):
    records = [lettered("a"), named("b"), lettered("c", "A")]
    one = choice_logprobs(tiny_llama, char_tokenizer, records, batch_size=1, style="text")
    many = choice_logprobs(tiny_llama, char_tokenizer, records, batch_size=8, style="text")
    for row_one, row_many in zip(one, many):
        for (s1, n1), (s2, n2) in zip(row_one, row_many):
            assert n1 == n2 and s1 == pytest.approx(s2, abs=1e-4)


def test_sum_and_length_normalised_scores_can_disagree(char_tokenizer, tiny_llama, monkeypatch):
    # gold option B: -6 over 6 tokens (mean -1); option A: -4 over 2 tokens (mean -2).
    fake = [[(-4.0, 2), (-6.0, 6), (-9.0, 3)]]
    monkeypatch.setattr("taskexpert.evaluate.choice_logprobs", lambda *a, **k: fake)
    result = evaluate_multiple_choice(tiny_llama, char_tokenizer, [lettered()])
    assert result["multiple_choice_accuracy"] == 0.0
    assert result["multiple_choice_accuracy_norm"] == 1.0
    (prediction,) = result["predictions"]
    assert prediction["mc_prediction"] == "A" and prediction["mc_prediction_norm"] == "B"
    assert prediction["mc_gold"] == "B"


def test_evaluate_model_merges_exact_match_and_multiple_choice(char_tokenizer, tiny_llama):
    plain = Record(id="p", instruction="2+2?", output="The answer is 4.", answer="4")
    records = [lettered("a"), plain, named("b")]
    result = evaluate_model(tiny_llama, char_tokenizer, records, max_new_tokens=4)
    assert result["n"] == 3 and result["n_multiple_choice"] == 2
    assert 0.0 <= result["multiple_choice_accuracy"] <= 1.0
    by_id = {p["id"]: p for p in result["predictions"]}
    assert list(by_id) == ["a", "p", "b"]
    assert "mc_correct" in by_id["a"] and "mc_correct" not in by_id["p"]
    assert (
        result["multiple_choice_accuracy"]
        == (by_id["a"]["mc_correct"] + by_id["b"]["mc_correct"]) / 2
    )
    only_em = evaluate_model(tiny_llama, char_tokenizer, [plain], max_new_tokens=4)
    assert "multiple_choice_accuracy" not in only_em and only_em["n"] == 1


def test_no_choices_is_an_error_for_the_mc_scorer(char_tokenizer, tiny_llama):
    with pytest.raises(InputError, match="no records with choices"):
        evaluate_multiple_choice(
            tiny_llama, char_tokenizer, [Record(id="x", instruction="q", output="o")]
        )


def _separate_passes(model, tokenizer, records, **kwargs):
    """evaluate_model as it was: generation and option scoring as separate passes."""
    from taskexpert.evaluate import evaluate_exact_match

    max_length = kwargs.pop("max_length", 1024)
    em = evaluate_exact_match(model, tokenizer, records, **kwargs)
    mc = evaluate_multiple_choice(
        model, tokenizer, records, batch_size=kwargs["batch_size"], max_length=max_length
    )
    return em, {p["id"]: p for p in mc["predictions"]}


def assert_same_as_separate_passes(result, em, mc_by_id):
    """Same generations (exactly) and option log-probs (1e-4, float32 cache vs full pass)."""
    assert [p["generated"] for p in result["predictions"]] == [
        p["generated"] for p in em["predictions"]
    ]
    assert result["exact_match"] == em["exact_match"]
    scored = [p for p in result["predictions"] if "option_logprobs" in p]
    assert {p["id"] for p in scored} == set(mc_by_id)
    for p in scored:
        expected = mc_by_id[p["id"]]
        assert p["option_logprobs"] == pytest.approx(expected["option_logprobs"], abs=1e-4)
        assert p["mc_prediction"] == expected["mc_prediction"]


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_one_prompt_pass_gives_the_separate_passes_results(
    char_tokenizer, tiny_llama, batch_size, monkeypatch
):
    """Generation and every option's score from one prompt pass per batch: records with three
    options, two options and none, in batches that mix them; the same texts and scores as
    generating and scoring each option in separate passes."""
    plain = Record(id="p", instruction="2+2?", output="The answer is 4.", answer="4")
    records = [lettered("a"), named("b"), plain, lettered("c", "C"), named("d", "No")]
    with monkeypatch.context() as patched:  # every record fits: no separate pass is made
        for name in ("choice_logprobs", "generate_greedy"):
            patched.setattr(f"taskexpert.evaluate.{name}", None)
        result = evaluate_model(
            tiny_llama, char_tokenizer, records, max_new_tokens=5, batch_size=batch_size
        )
    em, mc = _separate_passes(
        tiny_llama, char_tokenizer, records, max_new_tokens=5, batch_size=batch_size
    )
    assert_same_as_separate_passes(result, em, mc)
    assert [len(mc[i]["option_logprobs"]) for i in "abcd"] == [3, 2, 3, 2]


def test_a_prompt_too_long_for_its_options_is_cut_as_before(char_tokenizer, tiny_llama):
    """A record whose prompt and longest option overflow max_length is scored by the separate
    passes (which cut the prompt from the left); the others share their prompt pass."""
    long = Record(
        id="long",
        instruction="Which is true? " * 6,
        output="The answer is yes.",
        answer="yes",
        choices=["no", "yes"],
    )
    records = [named("b"), long, lettered("a")]
    prompt = len(char_tokenizer(format_prompt(long, char_tokenizer))["input_ids"])
    max_length = prompt + 5  # "The answer is yes." (18 characters) no longer fits
    result = evaluate_model(
        tiny_llama, char_tokenizer, records, max_new_tokens=4, batch_size=4, max_length=max_length
    )
    em, mc = _separate_passes(
        tiny_llama, char_tokenizer, records, max_new_tokens=4, batch_size=4, max_length=max_length
    )
    assert_same_as_separate_passes(result, em, mc)
    uncut = evaluate_model(tiny_llama, char_tokenizer, [long], max_new_tokens=4)
    assert uncut["predictions"][0]["option_logprobs"] != pytest.approx(
        result["predictions"][1]["option_logprobs"], abs=1e-4
    )  # the cut did change what was scored
