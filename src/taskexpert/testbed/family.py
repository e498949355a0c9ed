"""The `Family` type: how a skill draws, solves, explains and checks a problem, and its records.

The families themselves are in families.py (strings, numbers) and choice_families.py.

Each family keeps four template sets: `templates` (the bank's experts, the pool, calibration),
`pretrain_templates` (the base model's pretraining only), `alt_templates` (pool items of a
target's kind "from another source") and `new_templates` (target tasks: a family seen in the
bank, asked in words never seen). The base model learns every skill, at both levels, under
its pretraining wording only, so it knows the output format and can do a little of each family,
but does not know what the bank's instructions ask for; an expert LoRA trained on its family's
instructions unlocks the skill. That is what calibration needs (base weak, expert strong) at a
cost a small CPU can pay: a LoRA learning a skill from scratch in a few hundred steps was far
too weak here (exact match 0.0 to 0.05 on its own family).

Two levels: `easy` (short operands) and `full` (longer operands, more steps; experts,
calibration and targets use it). Problems are split by a stable hash of their key, so a
held-out problem (test splits) never appears in training data or the pool.

The rationale states the intermediate steps; `output` is the rationale followed by
"\\nThe answer is X." so `prompts.extract_answer` finds X. Letter strings are written
without spaces in rationales too: with the testbed tokenizer, a space between letters is a
token of its own, and measured here a tiny model then fails to learn to copy a string in 300
steps (exact match 0.0) while it copies the unspaced string perfectly (1.0).
"""

from __future__ import annotations

import random
import string
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from taskexpert.prompts import ANSWER_PREFIX, AnswerKind, normalize_answer
from taskexpert.records import Record

Level = Literal["easy", "full"]
Split = Literal["train", "test"]
Problem = dict

LETTERS = string.ascii_lowercase
VOWELS = "aeiou"
OPTION_LETTERS = "ABCDE"
# Every 8th problem (by a stable hash of its key) is held out for test splits.
HELDOUT_MODULUS = 8


def is_heldout(key: str) -> bool:
    """Stable train/test split of the problem space (independent of seed and order)."""
    return zlib.crc32(key.encode()) % HELDOUT_MODULUS == 0


def distinct_letters(rng: random.Random, n: int) -> str:
    """n distinct letters: no repeats, so every step of a rationale is unambiguous."""
    return "".join(rng.sample(LETTERS, n))


def add_steps(a: int, b: int) -> str:
    """Column addition of two numbers < 100, one sentence per column."""
    if a < 10 and b < 10:
        return f"{a} plus {b} is {a + b}."
    ones = a % 10 + b % 10
    carry = ones // 10
    tens = a // 10 + b // 10 + carry
    return (
        f"{a % 10} plus {b % 10} is {ones}, write {ones % 10} carry {carry}. "
        f"{a // 10} plus {b // 10} plus {carry} is {tens}."
    )


@dataclass(frozen=True)
class Family:
    """One skill: how to draw a problem, solve it, explain it and check an answer."""

    name: str
    kind: AnswerKind
    skill: str
    templates: tuple[str, ...]
    alt_templates: tuple[str, ...]
    new_templates: tuple[str, ...]
    pretrain_templates: tuple[str, ...]
    sample: Callable[[random.Random, Level], Problem]
    solve: Callable[[Problem], str]
    explain: Callable[[Problem], str]
    verify: Callable[[Problem, str], bool]
    key: Callable[[Problem], str]
    options: Callable[[Problem], list[str] | None] = field(default=lambda p: None)
    # False: the base pretrains on the easy level only (multiple choice, see MC_ADD_OPTIONS;
    # initials)
    pretrain_full: bool = True

    def answer(self, problem: Problem) -> str:
        return self.solve(problem)

    def rationale(self, problem: Problem) -> str:
        return self.explain(problem)

    def check(self, problem: Problem, answer: str) -> bool:
        """Independent check of a candidate answer (normalised like exact match does)."""
        return self.verify(problem, normalize_answer(answer, self.kind))

    def draw(self, rng: random.Random, level: Level, split: Split = "train") -> Problem:
        """A problem from the requested side of the held-out split."""
        for _ in range(10_000):
            problem = self.sample(rng, level)
            if is_heldout(self.key(problem)) == (split == "test"):
                return problem
        raise RuntimeError(f"family {self.name}: cannot draw a {split} problem at level {level}")

    def instruction(self, problem: Problem, template: str) -> str:
        text = template.format(**problem)
        opts = self.options(problem)
        if opts:
            text += "\n" + "\n".join(f"{OPTION_LETTERS[i]} {o}" for i, o in enumerate(opts))
        return text


def make_output(rationale: str, answer: str) -> str:
    """Rationale, then the answer in the form `prompts.extract_answer` reads."""
    return f"{rationale}\n{ANSWER_PREFIX}{answer}."


def make_record(
    family: Family, problem: Problem, template: str, record_id: str, source: str | None = None
) -> Record:
    """The canonical record of one problem: output = rationale + answer sentence."""
    answer, rationale = family.answer(problem), family.rationale(problem)
    return Record(
        id=record_id,
        instruction=family.instruction(problem, template),
        output=make_output(rationale, answer),
        answer=answer,
        rationale=rationale,
        source=source or family.name,
        choices=family.options(problem),
    )


def held_out_records(family: Family, n: int, rng: random.Random, prefix: str) -> list[Record]:
    """Up to n distinct held-out full-level problems in the bank's wording (ids
    `<prefix>-0000`, ...); fewer when the family has fewer (multiply has 42)."""
    records: list[Record] = []
    seen: set[str] = set()
    for _ in range(100 * n):
        if len(records) == n:
            break
        problem = family.draw(rng, "full", "test")
        record = make_record(
            family, problem, rng.choice(family.templates), f"{prefix}-{len(records):04d}"
        )
        if record.instruction not in seen:
            seen.add(record.instruction)
            records.append(record)
    return records
