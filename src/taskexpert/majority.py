"""The floor no model has to reach: every test item answered with the K-shot's commonest answer.

Why: on a yes/no or multiple-choice target a constant answer often scores far above what a
reader takes for chance (BoolQ's validation set is 62% "yes"), so "the mixture scores 0.61"
means nothing until it is set beside that floor. The answer is taken from the K-shot, what a
user has before training, never from the test items; the verdict shows it as a reference row
(docs/design.md, The verdict).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from taskexpert.errors import InputError
from taskexpert.evaluate import OPTION_LETTERS, gold_answer, gold_choice
from taskexpert.prompts import infer_answer_kind, normalize_answer
from taskexpert.records import Record

# An exact-match answer must recur at least this often in the K-shot to count as the
# "commonest": a one-off number (GSM8K) is no answer a user would bet every item on.
MIN_SUPPORT = 2


@dataclass(frozen=True)
class MajorityAnswer:
    """The K-shot's commonest answer and how often it is right on each test item."""

    answer: str  # as a user reads it: the option's text, "option B", or the exact answer
    support: int  # K-shot records that give it
    counted: int  # K-shot records whose answer could be read
    scores: list[float]  # 1.0 where the test item's gold answer is that answer

    @property
    def detail(self) -> str:
        return f'always "{self.answer}" ({self.support} of {self.counted} K-shot answers)'


def _choice_key(record: Record) -> tuple[int, str]:
    """(option index, option text normalised): the index is what a constant pick chooses."""
    index = gold_choice(record)
    return index, normalize_answer((record.choices or [])[index], "text")


def _by_choice(kshot: Sequence[Record], test: Sequence[Record]) -> MajorityAnswer | None:
    keys = []
    for record in kshot:
        try:
            keys.append(_choice_key(record))
        except InputError:
            continue  # a K-shot record without a usable option answer says nothing here
    if not keys:
        return None
    index, count = Counter(i for i, _ in keys).most_common(1)[0]
    texts = {text for i, text in keys if i == index}
    answer = texts.pop() if len(texts) == 1 else f"option {OPTION_LETTERS[index]}"
    scores = [float(gold_choice(record) == index) for record in test]
    return MajorityAnswer(answer, count, len(keys), scores)


def _by_answer(kshot: Sequence[Record], test: Sequence[Record]) -> MajorityAnswer | None:
    answers = []
    for record in kshot:
        try:
            answers.append(gold_answer(record, infer_answer_kind(record)))
        except InputError:
            continue
    if not answers:
        return None
    answer, count = Counter(answers).most_common(1)[0]
    if count < MIN_SUPPORT:
        return None
    scores = [float(gold_answer(r, infer_answer_kind(r)) == answer) for r in test]
    return MajorityAnswer(answer, count, len(answers), scores)


def majority_answer(
    kshot: Sequence[Record], test: Sequence[Record], metric: str = "auto"
) -> MajorityAnswer | None:
    """The constant-answer floor for `test`, scored as the run scores it (`metric`: auto,
    multiple_choice or exact_match); None when the K-shot has no answer given twice, or the
    test set mixes scored-by-option and scored-by-answer items under auto."""
    if not kshot or not test:
        return None
    with_choices = sum(bool(r.choices) for r in test)
    if metric == "multiple_choice" or (metric == "auto" and with_choices == len(test)):
        return _by_choice(kshot, test)
    if metric == "exact_match" or with_choices == 0:
        return _by_answer(kshot, test)
    return None
