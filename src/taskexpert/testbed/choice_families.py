"""The multiple-choice families (answer kind "letter"): fixed options per level, one right.

Part of FAMILIES (families.py); the `Family` type is in family.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from taskexpert.testbed.family import (
    LETTERS,
    OPTION_LETTERS,
    VOWELS,
    Family,
    Level,
    Problem,
    add_steps,
)


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
        f"{add_steps(p['a'], p['b'])} So the sum is {p['a'] + p['b']}, "
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
