import random

import pytest

from taskexpert.prompts import extract_answer, infer_answer_kind, normalize_answer
from taskexpert.testbed.families import FAMILIES, is_heldout, make_record
from taskexpert.testbed.tasks import TARGETS


def _intermediate(name: str, p: dict) -> str:
    """A step a correct rationale must state on the way to the answer."""
    if name == "mc_vowels":
        first = next((c for c in p["word"] if c in "aeiou"), None)
        return f"{first} 1" if first else f"{p['word'][0]} no"
    if name == "reverse":
        return p["word"][::-1]
    if name == "shift":
        c = p["word"][0]
        return f"{c} becomes {chr((ord(c) - 97 + 1) % 26 + 97)}"
    if name == "initials":
        return "".join(w[0] for w in p["list"])
    if name == "consonants":
        return "".join(c for c in p["word"] if c not in "aeiou")
    if name in ("add", "mc_add"):
        both_small = p["a"] < 10 and p["b"] < 10
        return f"is {p['a'] + p['b']}" if both_small else f"is {p['a'] % 10 + p['b'] % 10}"
    if name == "multiply":
        return f"is {(p['a'] % 10) * p['b']}"
    if name == "list_sum":
        return f"is {p['list'][0] + p['list'][1]}"
    if name == "count":
        return f"{p['word'][-1]} {len(p['word'])}"
    if name == "max":
        return f"{max(p['list'][:2])} is larger"
    if name == "story":
        gain, n = p["events"][0]
        return f"is {p['start'] + (n if gain else -n)}"
    raise AssertionError(name)


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("level", ["easy", "full"])
def test_generator_checker_and_rationale_agree(name, level):
    family, rng = FAMILIES[name], random.Random(1)
    for _ in range(40):
        problem = family.draw(rng, level)
        record = make_record(family, problem, rng.choice(family.templates), "x")
        kind = infer_answer_kind(record)
        assert kind == family.kind
        assert family.check(problem, record.answer)
        assert extract_answer(record.output, kind) == normalize_answer(record.answer, kind)
        assert _intermediate(name, problem) in record.rationale
        assert record.output.startswith(record.rationale)
        wrong = {"letter": "E" if record.answer != "E" else "A", "number": "1000"}.get(
            kind, record.answer[::-1] + "q"
        )
        assert not family.check(problem, wrong)
        if family.kind == "letter":
            assert record.choices and 3 <= len(record.choices) <= 5
            # the options are fixed per level, and the rationale ends on the right one's text
            index = "ABCDE".index(record.answer)
            assert record.choices == list(problem["choices"])
            assert record.rationale.endswith(f" {record.choices[index]}.")
            assert f"\n{record.answer} {record.choices[index]}" in record.instruction


def test_every_family_has_several_templates_of_each_set():
    assert len(FAMILIES) >= 12
    kinds = {f.kind for f in FAMILIES.values()}
    assert {"text", "number", "letter"} <= kinds
    for family in FAMILIES.values():
        assert len(family.templates) >= 3
        assert family.alt_templates and family.new_templates
        assert not set(family.new_templates) & set(family.templates + family.alt_templates)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_targets_answer_with_one_part_per_skill(name):
    target, rng = TARGETS[name], random.Random(2)
    records = target.make(rng, 20, "test", "t")
    assert len({r.instruction for r in records}) == 20
    for record in records:
        assert len(record.answer.split()) == len(target.skills)
        kind = infer_answer_kind(record)
        assert extract_answer(record.output, kind) == normalize_answer(record.answer, kind)
    parts = target.draw(rng, "train")
    assert target.check(parts, target.answer(parts))
    assert not target.check(parts, target.answer(parts) + " 9")
    assert len(TARGETS) >= 4
    assert sum(t.kind == "two_skill" for t in TARGETS.values()) >= 2


def test_generation_is_deterministic_per_seed_and_split_is_stable():
    family = FAMILIES["add"]
    a = [family.draw(random.Random(5), "full") for _ in range(3)]
    b = [family.draw(random.Random(5), "full") for _ in range(3)]
    assert a == b
    tests = [family.draw(random.Random(s), "full", "test") for s in range(30)]
    assert all(is_heldout(family.key(p)) for p in tests)
    assert len({family.key(p) for p in tests}) > 10


@pytest.mark.parametrize("name", ["mc_add", "mc_vowels"])
def test_multiple_choice_options_are_fixed_balanced_and_differ_by_level(name):
    family, rng = FAMILIES[name], random.Random(3)
    options = {
        level: {tuple(family.draw(rng, level)["choices"]) for _ in range(50)}
        for level in ("easy", "full")
    }
    assert len(options["easy"]) == len(options["full"]) == 1
    assert options["easy"] != options["full"]
    answers = [family.answer(family.draw(rng, "full")) for _ in range(800)]
    shares = [answers.count(letter) / len(answers) for letter in "ABCD"]
    assert min(shares) > 0.18 and max(shares) < 0.32  # chance stays near 0.25
    assert not FAMILIES[name].pretrain_full
