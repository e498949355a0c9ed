"""The open instruction pool: what data selection searches, with the truth about every item.

Like a real open pool it is lopsided (family sizes fall off geometrically), repetitive (near
duplicates of existing items) and dirty (noise records with no usable answer). It also holds
a few hundred items of each target's kind under other templates and another `source` name,
so retrieval has something to find; those sources are the target's `relevant_sources`.
Held-out problems (the test splits) never appear in it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from taskexpert.records import Record
from taskexpert.testbed.families import FAMILIES, LETTERS, WORDS, make_record
from taskexpert.testbed.tasks import TARGETS

NOISE_SOURCE = "noise"
# Family sizes fall off by this factor from one family to the next (in a seeded order).
SIZE_DECAY = 0.8
_NEAR_DUPLICATE_EDITS = (
    lambda s: "Please " + s[0].lower() + s[1:],
    lambda s: s.rstrip(".?") + "!",
    lambda s: s + " Show your steps.",
    lambda s: "Question: " + s,
)


@dataclass
class PoolTruth:
    """What the pool holds: items per source, near-duplicate pairs and noise ids."""

    sources: dict[str, int] = field(default_factory=dict)
    near_duplicates: dict[str, str] = field(default_factory=dict)  # duplicate id -> original id
    noise_ids: list[str] = field(default_factory=list)
    relevant: dict[str, str] = field(default_factory=dict)  # target -> pool source

    def to_dict(self) -> dict:
        return {
            "size": sum(self.sources.values()),
            "sources": dict(sorted(self.sources.items())),
            "near_duplicates": self.near_duplicates,
            "noise_ids": self.noise_ids,
            "noise_source": NOISE_SOURCE,
            "relevant_sources": self.relevant,
        }


def family_sizes(total: int, rng: random.Random) -> dict[str, int]:
    """Unequal sizes summing to about `total`: geometric decay over a seeded family order."""
    names = sorted(FAMILIES)
    rng.shuffle(names)
    weights = [SIZE_DECAY**i for i in range(len(names))]
    scale = total / sum(weights)
    return {name: max(1, round(w * scale)) for name, w in zip(names, weights)}


def _noise(rng: random.Random, record_id: str) -> Record:
    """Gibberish with no answer: what scraped pools contain and a selector should avoid."""

    def junk(n: int) -> str:
        return " ".join("".join(rng.choices(LETTERS, k=rng.randint(2, 7))) for _ in range(n))

    style = rng.randrange(3)
    if style == 0:
        instruction, output = junk(rng.randint(3, 8)), junk(rng.randint(2, 10))
    elif style == 1:
        instruction, output = " ".join(rng.choices(WORDS, k=5)) + "?", "I do not know."
    else:
        instruction, output = junk(4), " ".join(rng.choices(WORDS, k=rng.randint(3, 9))) + "."
    return Record(id=record_id, instruction=instruction, output=output, source=NOISE_SOURCE)


def build_pool(
    rng: random.Random,
    *,
    family_total: int,
    relevant_per_target: int,
    near_duplicate_share: float,
    noise_share: float,
    easy_share: float = 0.5,
) -> tuple[list[Record], PoolTruth]:
    """The pool records (shuffled, ids pool-NNNNNN) and their ground truth."""
    items: list[Record] = []
    for name, size in family_sizes(family_total, rng).items():
        family = FAMILIES[name]
        for _ in range(size):
            level = "easy" if rng.random() < easy_share else "full"
            problem = family.draw(rng, level, "train")
            items.append(make_record(family, problem, rng.choice(family.templates), ""))
    truth = PoolTruth()
    for target in TARGETS.values():
        items += target.make(rng, relevant_per_target, "train", "", pool=True)
        truth.relevant[target.name] = target.pool_source
    n_noise = round(noise_share * len(items))
    noise = [_noise(rng, "") for _ in range(n_noise)]
    originals = rng.sample(range(len(items)), round(near_duplicate_share * len(items)))
    duplicates = []
    for index in originals:
        edit = rng.choice(_NEAR_DUPLICATE_EDITS)
        copy = items[index].model_copy(update={"instruction": edit(items[index].instruction)})
        duplicates.append((index, copy))
    everything = items + noise + [copy for _, copy in duplicates]
    order = list(range(len(everything)))
    rng.shuffle(order)
    # the position in the shuffled file decides the id, so ids read in file order
    position = {old: pos for pos, old in enumerate(order)}
    new_id = {old: f"pool-{position[old]:06d}" for old in range(len(everything))}
    records: list[Record] = [None] * len(everything)  # type: ignore[list-item]
    for old, record in enumerate(everything):
        records[position[old]] = record.model_copy(update={"id": new_id[old]})
        truth.sources[record.source] = truth.sources.get(record.source, 0) + 1
    truth.noise_ids = sorted(new_id[len(items) + i] for i in range(n_noise))
    base = len(items) + n_noise
    for offset, (index, _) in enumerate(duplicates):
        truth.near_duplicates[new_id[base + offset]] = new_id[index]
    truth.near_duplicates = dict(sorted(truth.near_duplicates.items()))
    return records, truth
