"""Target tasks: a known family asked with new templates, and two-skill compositions.

A two-skill task answers with one part from each skill ("tzqk 85": the reverse of a string
and a sum), so a single expert gets at most one part right, while token-level routing in a
mixture can take each part from a different expert. Its rationale is the two skills'
rationales one after the other, which is what a model solving it has to produce.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from taskexpert.records import Record
from taskexpert.testbed.families import (
    FAMILIES,
    Family,
    Level,
    Problem,
    Split,
    is_heldout,
    make_output,
)


@dataclass(frozen=True)
class Target:
    """A target task: its skills (families), templates for K-shot/test and for pool items."""

    name: str
    kind: str  # "known_family" or "two_skill"
    skills: tuple[str, ...]
    templates: tuple[str, ...]
    pool_templates: tuple[str, ...]
    pool_source: str
    description: str

    @property
    def families(self) -> list[Family]:
        return [FAMILIES[s] for s in self.skills]

    def draw(self, rng: random.Random, split: Split = "train", level: Level = "full") -> Problem:
        """One problem per skill, as a dict {skill: problem}, on the requested split side."""
        for _ in range(10_000):
            parts = {f.name: f.sample(rng, level) for f in self.families}
            key = "|".join(f.key(parts[f.name]) for f in self.families)
            if is_heldout(self.name + key) == (split == "test"):
                return parts
        raise RuntimeError(f"target {self.name}: cannot draw a {split} problem")

    def answer(self, parts: Problem) -> str:
        return " ".join(f.answer(parts[f.name]) for f in self.families)

    def rationale(self, parts: Problem) -> str:
        return " ".join(f.rationale(parts[f.name]) for f in self.families)

    def check(self, parts: Problem, answer: str) -> bool:
        """Each space-separated part must pass its own family's checker."""
        pieces = answer.strip().rstrip(".").split()
        if len(pieces) != len(self.families):
            return False
        return all(f.check(parts[f.name], p) for f, p in zip(self.families, pieces))

    def instruction(self, parts: Problem, template: str) -> str:
        if len(self.families) == 1:
            family = self.families[0]
            return family.instruction(parts[family.name], template)
        fields = {}
        for prefix, family in zip("xy", self.families):
            fields.update({f"{prefix}_{k}": v for k, v in parts[family.name].items()})
        return template.format(**fields)

    def record(self, parts: Problem, template: str, record_id: str, source: str) -> Record:
        answer, rationale = self.answer(parts), self.rationale(parts)
        choices = None
        if len(self.families) == 1:
            choices = self.families[0].options(parts[self.families[0].name])
        return Record(
            id=record_id,
            instruction=self.instruction(parts, template),
            output=make_output(rationale, answer),
            answer=answer,
            rationale=rationale,
            source=source,
            choices=choices,
        )

    def make(
        self, rng: random.Random, n: int, split: Split, prefix: str, *, pool: bool = False
    ) -> list[Record]:
        """n records with distinct prompts, from the target's (or the pool's) templates."""
        templates = self.pool_templates if pool else self.templates
        source = self.pool_source if pool else self.name
        records, seen = [], set()
        attempts = 0
        while len(records) < n:
            attempts += 1
            if attempts > 100 * n + 1000:
                raise RuntimeError(f"target {self.name}: only {len(records)} distinct problems")
            parts = self.draw(rng, split)
            record = self.record(
                parts, rng.choice(templates), f"{prefix}-{len(records):05d}", source
            )
            if record.instruction not in seen:
                seen.add(record.instruction)
                records.append(record)
        return records


def _known(name: str, family: str, pool_source: str) -> Target:
    fam = FAMILIES[family]
    return Target(
        name=name,
        kind="known_family",
        skills=(family,),
        templates=fam.new_templates,
        pool_templates=fam.alt_templates,
        pool_source=pool_source,
        description=f"{fam.skill}, asked with templates the bank never saw",
    )


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        _known("mc_add_quiz", "mc_add", "quiz_site"),
        _known("count_chat", "count", "chat_logs"),
        Target(
            name="reverse_and_add",
            kind="two_skill",
            skills=("reverse", "add"),
            templates=(
                "Reverse the letters of {x_word} and add {y_a} and {y_b}.",
                "Write {x_word} backwards, then compute {y_a} + {y_b}.",
            ),
            pool_templates=(
                "Two jobs: spell {x_word} in reverse order and find the sum of {y_a} and {y_b}.",
                "Flip {x_word} and also give {y_a} plus {y_b}.",
            ),
            pool_source="puzzle_forum",
            description="the reverse of a string and a sum, answered as 'tzqk 85'",
        ),
        Target(
            name="initials_and_max",
            kind="two_skill",
            skills=("initials", "max"),
            templates=(
                "Give the initials of {x_words} and the largest of {y_numbers}.",
                "Take the first letters of {x_words}, then find the maximum of {y_numbers}.",
            ),
            pool_templates=(
                "Two jobs: write the first letter of each word of {x_words} and pick the "
                "biggest of {y_numbers}.",
                "Initials of {x_words} plus the top number in {y_numbers}?",
            ),
            pool_source="homework_dump",
            description="the initials of some words and a maximum, answered as 'rat 71'",
        ),
    )
}
