import random
from collections import Counter

import pytest

from taskexpert.prompts import extract_answer
from taskexpert.testbed.families import FAMILIES
from taskexpert.testbed.pretraining import PAIR_JOINERS, pretraining_records


def test_family_weights_shift_the_mix():
    records = pretraining_records(6000, 0, full_share=0.5, family_weights={"mc_add": 3.0})
    counts = Counter(r.source for r in records)
    others = [counts[name] for name in FAMILIES if name != "mc_add"]
    assert counts["mc_add"] > 2.3 * max(others)
    assert min(others) > 0.6 * max(others)
    assert len(records) == 6000 and len({r.id for r in records}) == 6000


def test_pairs_ask_two_skills_in_pretraining_wording_and_answer_both():
    records = pretraining_records(3000, 1, full_share=0.6, pair_share=0.2)
    pairs = [r for r in records if "+" in r.source]
    assert 0.15 < len(pairs) / len(records) < 0.25
    for record in pairs[:200]:
        first, second = (FAMILIES[name] for name in record.source.split("+"))
        assert first.name != second.name
        assert "letter" not in (first.kind, second.kind)  # options must come last
        assert any(joiner in record.instruction for joiner in PAIR_JOINERS)
        one, two = extract_answer(record.output, "text").split(" ", 1)
        assert record.answer == f"{one} {two}"
        assert record.rationale and record.output.startswith(record.rationale)
        # every part is in pretraining wording: no bank template's opening words appear
        for family in (first, second):
            openings = [t.split("{")[0].strip() for t in family.templates]
            assert not any(len(o) > 8 and o in record.instruction for o in openings)


def test_records_are_deterministic_and_unknown_weights_are_refused():
    kwargs = dict(full_share=0.5, family_weights={"mc_vowels": 2.0}, pair_share=0.1)
    assert pretraining_records(500, 3, **kwargs) == pretraining_records(500, 3, **kwargs)
    assert pretraining_records(500, 3, **kwargs) != pretraining_records(500, 4, **kwargs)
    with pytest.raises(ValueError, match="unknown families: nope"):
        pretraining_records(10, 0, full_share=0.5, family_weights={"nope": 1.0})


def test_multiple_choice_is_pretrained_at_the_easy_level_only():
    records = pretraining_records(3000, 2, full_share=1.0)
    for name in ("mc_add", "mc_vowels"):
        family = FAMILIES[name]
        easy_options = "\n".join(
            f"{letter} {o}"
            for letter, o in zip("ABCD", family.draw(random.Random(0), "easy")["choices"])
        )
        mine = [r for r in records if r.source == name]
        assert mine and all(r.instruction.endswith(easy_options) for r in mine)
    assert any(r.source == "add" and "carry" in r.output for r in records)  # others: full
