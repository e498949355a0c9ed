"""The base model's pretraining mix: every skill under its pretraining wording, some in pairs.

The base can do the skills but does not know the bank's instructions for the full level, so an
expert LoRA has something to unlock (see families.py). Two additions over an even mix:

- Family weights: a preset can weight a family up or down (`standard` doubles add, reverse
  and consonants: presets.py says why).
- Levels: a family with `pretrain_full=False` (multiple choice) is pretrained at the easy level
  only, whose options differ from the full level's (families.py, `MC_ADD_OPTIONS`).
- Pairs: a share of the records asks two skills at once ("<task one> Also: <task two>"), both
  in pretraining wording, answered with both rationales and "X Y". `pair_record` also builds
  the experts' two-task records (bank.py, `adapter_pair_share`), which is where the standard
  preset uses it: pairs in pretraining (builds 3 and 4 in the testbed README) made the base
  follow the bank's wording on more families, so `standard` keeps `pretrain_pair_share` at 0.
"""

from __future__ import annotations

import random

from taskexpert.records import Record
from taskexpert.testbed.families import FAMILIES, Family, Level, make_output, make_record

PAIR_JOINERS = (" Also: ", " Then: ", " Next: ")


def _level(rng: random.Random, full_share: float) -> Level:
    return "full" if rng.random() < full_share else "easy"


def pair_record(
    first: Family,
    second: Family,
    rng: random.Random,
    full_share: float,
    record_id: str,
    *,
    bank_wording: Family | None = None,
) -> Record:
    """Two problems in one prompt, answered with both rationales and 'X Y'.

    Each part uses its family's pretraining wording, except the family given as
    `bank_wording`, which uses the bank's (and the full level): that is how an expert's own
    training data puts its skill into two-task prompts (bank.py).
    """
    parts = []
    for family in (first, second):
        if family is bank_wording:
            level, templates = "full", family.templates
        else:
            level, templates = _level(rng, full_share), family.pretrain_templates
        problem = family.draw(rng, level, "train")
        parts.append(make_record(family, problem, rng.choice(templates), "p"))
    (a, b), joiner = parts, rng.choice(PAIR_JOINERS)
    answer = f"{a.answer} {b.answer}"
    rationale = f"{a.rationale} {b.rationale}"
    return Record(
        id=record_id,
        instruction=a.instruction + joiner + b.instruction,
        output=make_output(rationale, answer),
        answer=answer,
        rationale=rationale,
        source=f"{first.name}+{second.name}",
    )


def pairable_families() -> list[str]:
    """Families that can share a prompt: multiple-choice ones cannot (options come last)."""
    return [name for name in sorted(FAMILIES) if FAMILIES[name].kind != "letter"]


def pretraining_records(
    n: int,
    seed: int,
    *,
    full_share: float,
    canonical_share: float = 0.0,
    family_weights: dict[str, float] | None = None,
    pair_share: float = 0.0,
) -> list[Record]:
    """n shuffled records: single-skill items by family weight, plus `pair_share` pairs.

    `canonical_share` of the single items use the bank's templates at the easy level (off in
    both presets: even easy bank-wording items taught the base the bank's full level).
    Multiple-choice families never pair: their options would have to come last.
    """
    rng = random.Random(seed * 7919 + 2)
    weights = family_weights or {}
    unknown = sorted(set(weights) - set(FAMILIES))
    if unknown:
        raise ValueError(f"family weights name unknown families: {', '.join(unknown)}")
    names = sorted(FAMILIES)
    scale = [weights.get(name, 1.0) for name in names]
    pairable = pairable_families()
    records = []
    for i in range(n):
        if rng.random() < pair_share:
            first, second = rng.sample(pairable, 2)
            records.append(
                pair_record(FAMILIES[first], FAMILIES[second], rng, full_share, f"pre-{i}")
            )
            continue
        family = FAMILIES[rng.choices(names, weights=scale)[0]]
        if rng.random() < canonical_share:
            level, templates = "easy", family.templates
        else:
            level, templates = _level(rng, full_share), family.pretrain_templates
        if not family.pretrain_full:
            level = "easy"
        problem = family.draw(rng, level, "train")
        records.append(make_record(family, problem, rng.choice(templates), f"pre-{i}"))
    rng.shuffle(records)
    return records
