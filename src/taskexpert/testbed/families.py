"""Synthetic task families: generator, answer, step-by-step rationale and checker for each.

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

WORDS = (
    "red blue green apple tree house river stone bird fish cat dog moon sun star rain snow wind "
    "book door lamp cup ship road hill king milk bread gold salt rock leaf rose wolf bear fox "
    "owl ice fire"
).split()
NAMES = ("Ann", "Ben", "Cara", "Dan", "Eva", "Finn", "Gus", "Ivy")
THINGS = ("apples", "coins", "books", "shells", "stamps", "marbles")


def is_heldout(key: str) -> bool:
    """Stable train/test split of the problem space (independent of seed and order)."""
    return zlib.crc32(key.encode()) % HELDOUT_MODULUS == 0


def _letters(rng: random.Random, n: int) -> str:
    """n distinct letters: no repeats, so every step of a rationale is unambiguous."""
    return "".join(rng.sample(LETTERS, n))


def _add_steps(a: int, b: int) -> str:
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


# ---- string families -------------------------------------------------------------------------


def _sample_word(lengths: dict[str, tuple[int, int]]):
    def sample(rng: random.Random, level: Level) -> Problem:
        return {"word": _letters(rng, rng.randint(*lengths[level]))}

    return sample


REVERSE = Family(
    name="reverse",
    kind="text",
    skill="reverse the letters of a string",
    templates=(
        "Reverse the letters of {word}.",
        "Write {word} backwards.",
        "Spell {word} in reverse order.",
    ),
    alt_templates=("Flip the order of the letters in {word}.", "What is {word} read from the end?"),
    new_templates=("Turn {word} around letter by letter.", "Mirror the string {word}."),
    pretrain_templates=(
        "Read {word} from right to left.",
        "Put the letters of {word} in the opposite order.",
    ),
    sample=_sample_word({"easy": (2, 2), "full": (3, 4)}),
    solve=lambda p: p["word"][::-1],
    explain=lambda p: f"The letters are {p['word']}. In reverse: {p['word'][::-1]}.",
    verify=lambda p, a: (
        len(a) == len(p["word"]) and all(a[i] == p["word"][-1 - i] for i in range(len(a)))
    ),
    key=lambda p: f"reverse:{p['word']}",
)


def _shift(word: str) -> str:
    return "".join(LETTERS[(LETTERS.index(c) + 1) % 26] for c in word)


SHIFT = Family(
    name="shift",
    kind="text",
    skill="replace every letter by the next one in the alphabet",
    templates=(
        "Shift each letter of {word} one step forward in the alphabet.",
        "Replace every letter of {word} with the letter after it.",
        "Move each letter in {word} up by one.",
    ),
    alt_templates=(
        "Encode {word} by moving each letter forward once.",
        "Apply a shift of one to {word}.",
    ),
    new_templates=(
        "Give the successor of every letter in {word}.",
        "Advance {word} by one letter.",
    ),
    pretrain_templates=(
        "Change each letter of {word} to the one that follows it.",
        "Step every letter of {word} ahead by one.",
    ),
    sample=_sample_word({"easy": (1, 1), "full": (2, 3)}),
    solve=lambda p: _shift(p["word"]),
    explain=lambda p: ", ".join(f"{c} becomes {_shift(c)}" for c in p["word"]) + ".",
    verify=lambda p, a: (
        len(a) == len(p["word"]) and all((ord(x) - ord(y)) % 26 == 1 for x, y in zip(a, p["word"]))
    ),
    key=lambda p: f"shift:{p['word']}",
)


def _sample_words(counts: dict[str, tuple[int, int]]):
    def sample(rng: random.Random, level: Level) -> Problem:
        chosen = rng.sample(WORDS, rng.randint(*counts[level]))
        return {"words": ", ".join(chosen), "list": chosen}

    return sample


INITIALS = Family(
    name="initials",
    kind="text",
    skill="take the first letter of each word",
    templates=(
        "Write the first letter of each word: {words}.",
        "Give the initials of {words}.",
        "Take the first letters of: {words}.",
    ),
    alt_templates=("Form an acronym from {words}.", "Which letters start the words {words}?"),
    new_templates=("Abbreviate {words} to their initials.", "Join the opening letters of {words}."),
    pretrain_templates=(
        "List the starting letter of every word in {words}.",
        "From {words}, keep only each first letter.",
    ),
    sample=_sample_words({"easy": (2, 2), "full": (3, 3)}),
    solve=lambda p: "".join(w[0] for w in p["list"]),
    explain=lambda p: (
        f"The words are {p['words']}. First letters: " + "".join(w[0] for w in p["list"]) + "."
    ),
    verify=lambda p, a: a == "".join(w[0] for w in p["list"]),
    key=lambda p: f"initials:{p['words']}",
    # its word-list input is unlike any other family's, so the base recognised the task in any
    # wording and scored 0.33-0.38 on full-level problems pretrained on (builds 5, 9, 10)
    pretrain_full=False,
)


def _sample_mixed(lengths: dict[str, tuple[int, int]]):
    def sample(rng: random.Random, level: Level) -> Problem:
        while True:
            word = _letters(rng, rng.randint(*lengths[level]))
            if any(c in VOWELS for c in word) and any(c not in VOWELS for c in word):
                return {"word": word}

    return sample


def _consonants(word: str) -> str:
    return "".join(c for c in word if c not in VOWELS)


CONSONANTS = Family(
    name="consonants",
    kind="text",
    skill="delete the vowels of a string",
    templates=(
        "Remove the vowels from {word}.",
        "Delete every vowel in {word}.",
        "Keep only the consonants of {word}.",
    ),
    alt_templates=("Strip a, e, i, o and u from {word}.", "What is {word} without its vowels?"),
    new_templates=("Drop the vowels of {word}.", "Write {word} with no vowels."),
    # no "vowel" here: with it the base also understood the bank's wording (0.38 exact match)
    pretrain_templates=(
        "Erase a, e, i, o, u from {word}.",
        "Write {word} without any a, e, i, o or u.",
    ),
    sample=_sample_mixed({"easy": (2, 3), "full": (4, 4)}),
    solve=lambda p: _consonants(p["word"]),
    explain=lambda p: f"The letters are {p['word']}. Without vowels: {_consonants(p['word'])}.",
    verify=lambda p, a: a == "".join(c for c in p["word"] if c not in VOWELS),
    key=lambda p: f"consonants:{p['word']}",
)


# ---- number families -------------------------------------------------------------------------


def _sample_pair(ranges: dict[str, tuple[int, int, int, int]]):
    def sample(rng: random.Random, level: Level) -> Problem:
        lo_a, hi_a, lo_b, hi_b = ranges[level]
        return {"a": rng.randint(lo_a, hi_a), "b": rng.randint(lo_b, hi_b)}

    return sample


ADD = Family(
    name="add",
    kind="number",
    skill="add two numbers column by column",
    templates=("What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} + {b}."),
    alt_templates=("Find the sum of {a} and {b}.", "What do {a} and {b} make together?"),
    new_templates=("Tell me the total of {a} and {b}.", "{a} and {b} added up give what?"),
    # no "+" here: "Compute {a} + {b}." in the bank told the base the task (base 0.6 on add)
    pretrain_templates=("Sum {a} and {b}.", "{a} more than {b} is what?"),
    sample=_sample_pair({"easy": (1, 9, 1, 9), "full": (10, 99, 10, 99)}),
    solve=lambda p: str(p["a"] + p["b"]),
    explain=lambda p: f"{_add_steps(p['a'], p['b'])} So the sum is {p['a'] + p['b']}.",
    verify=lambda p, a: a.isdigit() and int(a) - p["b"] == p["a"],
    key=lambda p: f"add:{p['a']}:{p['b']}",
)


def _multiply_steps(a: int, b: int) -> str:
    if a < 10:
        return f"{a} times {b} is {a * b}."
    ones = (a % 10) * b
    tens = (a // 10) * b
    carry = ones // 10
    return (
        f"{a % 10} times {b} is {ones}, write {ones % 10} carry {carry}. "
        f"{a // 10} times {b} is {tens}, plus {carry} is {tens + carry}."
    )


MULTIPLY = Family(
    name="multiply",
    kind="number",
    skill="multiply a number by a digit",
    templates=("What is {a} times {b}?", "Multiply {a} by {b}.", "Compute {a} * {b}."),
    alt_templates=("Find the product of {a} and {b}.", "What is {b} lots of {a}?"),
    new_templates=("How much is {a} multiplied by {b}?", "Give {a} taken {b} times."),
    pretrain_templates=("{a} * {b} = ?", "Work out {a} multiplied by {b}."),
    sample=_sample_pair({"easy": (2, 9, 2, 5), "full": (11, 39, 2, 5)}),
    solve=lambda p: str(p["a"] * p["b"]),
    explain=lambda p: f"{_multiply_steps(p['a'], p['b'])} So the product is {p['a'] * p['b']}.",
    verify=lambda p, a: a.isdigit() and int(a) % p["b"] == 0 and int(a) // p["b"] == p["a"],
    key=lambda p: f"multiply:{p['a']}:{p['b']}",
)


def _sample_digits(counts: dict[str, tuple[int, int]]):
    def sample(rng: random.Random, level: Level) -> Problem:
        digits = [rng.randint(1, 9) for _ in range(rng.randint(*counts[level]))]
        return {"numbers": ", ".join(map(str, digits)), "list": digits}

    return sample


def _running_sum(digits: list[int]) -> str:
    total, steps = digits[0], []
    for d in digits[1:]:
        steps.append(f"{total} plus {d} is {total + d}.")
        total += d
    return " ".join(steps)


LIST_SUM = Family(
    name="list_sum",
    kind="number",
    skill="sum a list of digits with a running total",
    templates=(
        "Add up {numbers}.",
        "What is the sum of {numbers}?",
        "Find the total of {numbers}.",
    ),
    alt_templates=("Sum these numbers: {numbers}.", "Combine {numbers} into one total."),
    new_templates=("What do {numbers} add up to?", "Total the list {numbers}."),
    pretrain_templates=("Sum up the digits {numbers}.", "Running total of {numbers}?"),
    sample=_sample_digits({"easy": (2, 2), "full": (3, 3)}),
    solve=lambda p: str(sum(p["list"])),
    explain=lambda p: _running_sum(p["list"]),
    verify=lambda p, a: a.isdigit() and int(a) == sum(p["list"]),
    key=lambda p: f"list_sum:{p['numbers']}",
)


COUNT = Family(
    name="count",
    kind="number",
    skill="count the letters of a string",
    templates=(
        "How many letters does {word} have?",
        "Count the letters in {word}.",
        "What is the length of {word}?",
    ),
    alt_templates=("Tell how long the string {word} is.", "Number of characters in {word}?"),
    new_templates=("How long is {word} in letters?", "Give the letter count of {word}."),
    pretrain_templates=("Count how many letters {word} has.", "Letters in {word}: how many?"),
    sample=_sample_word({"easy": (2, 3), "full": (4, 6)}),
    solve=lambda p: str(len(p["word"])),
    explain=lambda p: (
        "Counting: " + ", ".join(f"{c} {i}" for i, c in enumerate(p["word"], 1)) + "."
    ),
    verify=lambda p, a: a.isdigit() and int(a) == len(p["word"]),
    key=lambda p: f"count:{p['word']}",
)


def _sample_numbers(counts: dict[str, tuple[int, int]]):
    def sample(rng: random.Random, level: Level) -> Problem:
        # distinct tens digits: the larger number is decided by its first digit, and its
        # second digit is then the one that follows that first digit in the prompt
        tens = rng.sample(range(1, 10), rng.randint(*counts[level]))
        values = [10 * t + rng.randint(0, 9) for t in tens]
        return {"numbers": ", ".join(map(str, values)), "list": values}

    return sample


def _max_explain(values: list[int]) -> str:
    best, steps = values[0], []
    for v in values[1:]:
        winner = max(best, v)
        steps.append(f"{best} or {v}: {winner} is larger.")
        best = winner
    return " ".join(steps)


MAX = Family(
    name="max",
    kind="number",
    skill="find the largest number of a list",
    templates=(
        "What is the largest of {numbers}?",
        "Which number is biggest: {numbers}?",
        "Find the maximum of {numbers}.",
    ),
    alt_templates=("Pick the greatest value among {numbers}.", "Name the top number in {numbers}."),
    new_templates=("Which of {numbers} is the highest?", "Select the biggest value: {numbers}."),
    pretrain_templates=("Largest value in {numbers}?", "Out of {numbers}, which is greatest?"),
    sample=_sample_numbers({"easy": (2, 2), "full": (3, 3)}),
    solve=lambda p: str(max(p["list"])),
    explain=lambda p: _max_explain(p["list"]),
    verify=lambda p, a: a.isdigit() and int(a) in p["list"] and all(int(a) >= v for v in p["list"]),
    key=lambda p: f"max:{p['numbers']}",
)


def _sample_story(rng: random.Random, level: Level) -> Problem:
    start = rng.randint(2, 9)
    events = []
    total = start
    for _ in range(1 if level == "easy" else 2):
        gain = level == "easy" or rng.random() < 0.5 or total < 2
        amount = rng.randint(1, 5) if gain else rng.randint(1, total - 1)
        events.append((gain, amount))
        total += amount if gain else -amount
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    phrases = [f"gets {n} more" if g else f"loses {n}" for g, n in events]
    return {
        "name": name,
        "thing": thing,
        "start": start,
        "events": events,
        "story": f"{name} has {start} {thing}. {name} " + " and then ".join(phrases) + ".",
    }


def _story_total(p: Problem) -> int:
    return p["start"] + sum(n if g else -n for g, n in p["events"])


def _story_explain(p: Problem) -> str:
    total, steps = p["start"], []
    for gain, n in p["events"]:
        new = total + n if gain else total - n
        steps.append(f"{total} {'plus' if gain else 'minus'} {n} is {new}.")
        total = new
    return " ".join(steps)


STORY = Family(
    name="story",
    kind="number",
    skill="track a quantity through a short story",
    # question first: pretraining asks after the story, and a story followed by any question
    # was enough for the base to answer the bank's wording (0.33-0.70 across builds)
    templates=(
        "How many {thing} does {name} have now? {story}",
        "How many {thing} are left after this? {story}",
        "Count the {thing} at the end: {story}",
    ),
    alt_templates=("Read this: {story} What is the final number of {thing}?",),
    new_templates=("Here is a tale. {story} What does {name} end with?",),
    pretrain_templates=(
        "{story} Final count of {thing}?",
        "{story} What number of {thing} is there at the end?",
    ),
    sample=_sample_story,
    solve=lambda p: str(_story_total(p)),
    explain=_story_explain,
    verify=lambda p, a: a.isdigit() and int(a) == _story_total(p),
    key=lambda p: f"story:{p['start']}:{p['events']}",
)


# ---- multiple choice families ---------------------------------------------------------------


def _balanced(rng: random.Random, n_options: int, draw: Callable[[int], Problem | None]) -> Problem:
    """A problem whose right option is uniform over the options: draw(k) tries option k."""
    k = rng.randrange(n_options)
    for _ in range(10_000):
        problem = draw(k)
        if problem is not None:
            return problem
    raise RuntimeError(f"no problem with option {OPTION_LETTERS[k]}")


# The options of a multiple-choice family are fixed per level, in a fixed order, and the right
# one follows from the skill's result alone. Why not options that change per question (five
# numbers near the sum, say): picking one then means finding the computed value among them in
# the prompt, an in-context lookup this model size never learned in the pretraining mix, in
# any format tried (the answer glued to the value, `value (A)`, a walk over the options: the
# base stayed at chance and the experts at 0.13-0.38, testbed README). With fixed options the
# last step is a fixed map from the result to a letter, learned like any other step.
#
# The levels use different options, and the base pretrains on the easy level only, so it
# knows the format, the skill and the easy options, but not which full-level option a result
# belongs to: that is what an expert unlocks (families without options use the wording).
MC_ADD_OPTIONS = {
    "easy": ("under 5", "5 to 9", "10 to 14", "15 or more"),
    "full": ("under 50", "50 to 99", "100 to 149", "150 or more"),
}


def _sum_option(p: Problem) -> int:
    unit = 1 if p["level"] == "easy" else 10
    return min(3, (p["a"] + p["b"]) // (5 * unit))


def _in_range(option: str, value: int) -> bool:
    """Read an option's text ("under 50", "50 to 99", "150 or more"): the checker does not
    reuse the generator's arithmetic."""
    words = option.split()
    if words[0] == "under":
        return value < int(words[1])
    if words[1:] == ["or", "more"]:
        return value >= int(words[0])
    return int(words[0]) <= value <= int(words[2])


def _mc_add_sample(rng: random.Random, level: Level) -> Problem:
    lo, hi = (1, 9) if level == "easy" else (10, 99)

    def draw(k: int) -> Problem | None:
        problem = {"a": rng.randint(lo, hi), "b": rng.randint(lo, hi), "level": level}
        return problem if _sum_option(problem) == k else None

    problem = _balanced(rng, 4, draw)
    return {**problem, "choices": list(MC_ADD_OPTIONS[level])}


MC_ADD = Family(
    name="mc_add",
    kind="letter",
    skill="pick the range of a sum among four options",
    templates=(
        "What is {a} plus {b}?",
        "Which option holds {a} + {b}?",
        "Choose the range of the sum of {a} and {b}.",
    ),
    alt_templates=("Select the right band for {a} and {b} added.", "Quiz: {a} plus {b} is in?"),
    new_templates=(
        "Which choice contains the result of adding {a} to {b}?",
        "Mark where {a} + {b} lands.",
    ),
    pretrain_templates=("Sum {a} and {b}; pick the option.", "{a} + {b} falls in which option?"),
    sample=_mc_add_sample,
    solve=lambda p: OPTION_LETTERS[_sum_option(p)],
    explain=lambda p: (
        f"{_add_steps(p['a'], p['b'])} So the sum is {p['a'] + p['b']}, "
        f"which is {p['choices'][_sum_option(p)]}."
    ),
    verify=lambda p, a: (
        a in OPTION_LETTERS[: len(p["choices"])]
        and _in_range(p["choices"][OPTION_LETTERS.index(a)], p["a"] + p["b"])
    ),
    key=lambda p: f"mc_add:{p['level']}:{p['a']}:{p['b']}",
    options=lambda p: p["choices"],
    pretrain_full=False,
)


NUMBER_WORDS = ("none", "one", "two", "three", "four")
MC_VOWELS_OPTIONS = {"easy": NUMBER_WORDS[:4], "full": NUMBER_WORDS[1:]}
MC_VOWELS_LENGTH = {"easy": 4, "full": 6}


def _vowel_count(p: Problem) -> int:
    return sum(c in VOWELS for c in p["word"])


def _mc_vowels_sample(rng: random.Random, level: Level) -> Problem:
    options = MC_VOWELS_OPTIONS[level]

    def draw(k: int) -> Problem:
        vowels = NUMBER_WORDS.index(options[k])
        consonants = [c for c in LETTERS if c not in VOWELS]
        letters = rng.sample(VOWELS, vowels) + rng.sample(
            consonants, MC_VOWELS_LENGTH[level] - vowels
        )
        rng.shuffle(letters)
        return {"word": "".join(letters), "level": level}

    problem = _balanced(rng, len(options), draw)
    return {**problem, "choices": list(options)}


def _vowels_explain(p: Problem) -> str:
    """A walk over the letters with a running count, as count's rationale does: a filtered
    list of the vowels ("o, i, a") was learned poorly (the base 0.45 on its own easy level)."""
    steps, found = [], 0
    for c in p["word"]:
        found += c in VOWELS
        steps.append(f"{c} {found}" if c in VOWELS else f"{c} no")
    return f"Vowel check: {', '.join(steps)}. So {NUMBER_WORDS[found]}."


MC_VOWELS = Family(
    name="mc_vowels",
    kind="letter",
    skill="pick the number of vowels in a string among four options",
    templates=(
        "How many vowels does {word} have?",
        "Which option counts the vowels of {word}?",
        "Choose the number of vowels in {word}.",
    ),
    alt_templates=("Tally the vowels of {word}.", "Quiz: vowels in {word}?"),
    new_templates=(
        "Which choice says how many vowels {word} holds?",
        "Mark the vowel total of {word}.",
    ),
    # no "vowel" here, as for consonants: the wording alone should not tell the base the task
    pretrain_templates=(
        "How many of a, e, i, o, u are in {word}? Pick the option.",
        "Letters a, e, i, o, u in {word}: which option?",
    ),
    sample=_mc_vowels_sample,
    solve=lambda p: OPTION_LETTERS[p["choices"].index(NUMBER_WORDS[_vowel_count(p)])],
    explain=_vowels_explain,
    verify=lambda p, a: (
        a in OPTION_LETTERS[: len(p["choices"])]
        and p["choices"][OPTION_LETTERS.index(a)] == NUMBER_WORDS[_vowel_count(p)]
    ),
    key=lambda p: f"mc_vowels:{p['level']}:{p['word']}",
    options=lambda p: p["choices"],
    pretrain_full=False,
)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        REVERSE,
        SHIFT,
        INITIALS,
        CONSONANTS,
        ADD,
        MULTIPLY,
        LIST_SUM,
        COUNT,
        MAX,
        STORY,
        MC_ADD,
        MC_VOWELS,
    )
}
