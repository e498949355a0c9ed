import pytest

from taskexpert.majority import MIN_SUPPORT, majority_answer
from taskexpert.records import Record


def yes_no(i: int, answer: str) -> Record:
    return Record(
        id=f"q{i}", instruction="Is it?", output=f"The answer is {answer}.", answer=answer,
        choices=["yes", "no"],
    )  # fmt: skip


def lettered(i: int, letter: str, n: int = 4) -> Record:
    return Record(
        id=f"m{i}", instruction="Pick one.", output=f"The answer is {letter}.", answer=letter,
        choices=[f"option text {i}-{k}" for k in range(n)],
    )  # fmt: skip


def numeric(i: int, answer: str) -> Record:
    return Record(id=f"n{i}", instruction="Compute.", output=f"The answer is {answer}.")


def test_yes_no_takes_the_kshots_commonest_and_scores_each_test_item():
    kshot = [yes_no(i, a) for i, a in enumerate(["yes", "no", "yes", "yes", "no"])]
    test = [yes_no(10 + i, a) for i, a in enumerate(["no", "yes", "yes", "no"])]
    floor = majority_answer(kshot, test)
    assert floor is not None
    assert (floor.answer, floor.support, floor.counted) == ("yes", 3, 5)
    assert floor.scores == [0.0, 1.0, 1.0, 0.0]
    assert floor.detail == 'always "yes" (3 of 5 K-shot answers)'


def test_lettered_options_of_different_text_pick_a_position():
    kshot = [lettered(i, a) for i, a in enumerate("BBCAB")]
    test = [lettered(10 + i, a) for i, a in enumerate("ABDB")]
    floor = majority_answer(kshot, test)
    assert floor.answer == "option B" and floor.support == 3
    assert floor.scores == [0.0, 1.0, 0.0, 1.0]


def test_exact_match_needs_an_answer_given_more_than_once():
    test = [numeric(9, "4"), numeric(10, "7")]
    once = [numeric(i, str(i)) for i in range(5)]
    assert majority_answer(once, test) is None
    repeated = [numeric(i, a) for i, a in enumerate(["7", "3", "7"])]
    floor = majority_answer(repeated, test)
    assert MIN_SUPPORT == 2 and floor.answer == "7" and floor.scores == [0.0, 1.0]


def test_kshot_records_without_a_usable_option_answer_are_skipped():
    broken = yes_no(0, "maybe")  # not one of its choices: gold_choice cannot place it
    kshot = [broken, yes_no(1, "no"), yes_no(2, "no")]
    floor = majority_answer(kshot, [yes_no(3, "no")])
    assert (floor.answer, floor.support, floor.counted, floor.scores) == ("no", 2, 2, [1.0])


@pytest.mark.parametrize(("metric", "expected"), [("auto", None), ("multiple_choice", "yes")])
def test_a_mixed_test_set_has_no_floor_under_auto(metric, expected):
    kshot = [yes_no(i, "yes") for i in range(3)]
    test = [yes_no(5, "yes"), numeric(6, "3")]
    if expected is None:
        assert majority_answer(kshot, test, metric) is None
    else:
        with pytest.raises(Exception, match="has no choices"):
            majority_answer(kshot, test, metric)


def test_exact_match_metric_on_option_records_compares_answers():
    kshot = [yes_no(i, a) for i, a in enumerate(["no", "no", "yes"])]
    floor = majority_answer(kshot, [yes_no(7, "no"), yes_no(8, "yes")], "exact_match")
    assert floor.answer == "no" and floor.scores == [1.0, 0.0]
