"""The testbed's skill families: each one's templates, generator, answer, rationale and checker.

The string and number families are defined here, the multiple-choice ones in
choice_families.py; `FAMILIES` holds all twelve by name. What a family is, and how its
problems become records (levels, the held-out split, the output format), is family.py; its
names are re-exported here for the modules that import them from this one.
"""

from __future__ import annotations

import random

from taskexpert.prompts import ANSWER_PREFIX
from taskexpert.testbed.choice_families import MC_ADD, MC_VOWELS
from taskexpert.testbed.family import (
    LETTERS,
    OPTION_LETTERS,
    VOWELS,
    Family,
    Level,
    Problem,
    Split,
    add_steps,
    distinct_letters,
    held_out_records,
    is_heldout,
    make_output,
    make_record,
)

__all__ = [
    "ANSWER_PREFIX",
    "FAMILIES",
    "LETTERS",
    "OPTION_LETTERS",
    "VOWELS",
    "WORDS",
    "Family",
    "Level",
    "Problem",
    "Split",
    "held_out_records",
    "is_heldout",
    "make_output",
    "make_record",
]

WORDS = (
    "red blue green apple tree house river stone bird fish cat dog moon sun star rain snow wind "
    "book door lamp cup ship road hill king milk bread gold salt rock leaf rose wolf bear fox "
    "owl ice fire"
).split()
NAMES = ("Ann", "Ben", "Cara", "Dan", "Eva", "Finn", "Gus", "Ivy")
THINGS = ("apples", "coins", "books", "shells", "stamps", "marbles")


# ---- string families -------------------------------------------------------------------------


def _sample_word(lengths: dict[str, tuple[int, int]]):
    def sample(rng: random.Random, level: Level) -> Problem:
        return {"word": distinct_letters(rng, rng.randint(*lengths[level]))}

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
            word = distinct_letters(rng, rng.randint(*lengths[level]))
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
    explain=lambda p: f"{add_steps(p['a'], p['b'])} So the sum is {p['a'] + p['b']}.",
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
