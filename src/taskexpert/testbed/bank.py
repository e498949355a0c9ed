"""The LoRA bank: one expert per family plus the traps a selection method must see through.

Each adapter is a PEFT directory (adapter_config.json + adapter_model.safetensors) trained
with the shared trainer on the base model. Its `kind` goes into testbed.json, never into the
adapter directory, so a selection method sees only what it would see in a real bank:

- expert: its family at the full level, rationale + answer.
- duplicate: the same recipe with another seed (different data order, init and samples).
- scaled: an expert with a different rank and alpha (alpha/r must be applied per adapter).
- mixture: several families at once, no specialisation.
- guesser (answers): multiple-choice answers without rationales.
- guesser (biased): answers only, from a data set where one option letter is right 80% of
  the time, so it hits the K-shot items whose answer is that letter.
- guesser (mimic): the format-mimic of issue 4. It writes rationale-shaped text taken from
  other problems of the family (right template, wrong numbers) before the correct letter, so
  its reasoning perplexity on true rationales comes close to an expert's while its
  rationales do not support its answers.
- foreign: trained on another base model (other hidden size): shapes that do not fit.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from taskexpert import peft_glue
from taskexpert.records import Record
from taskexpert.testbed.families import (
    ANSWER_PREFIX,
    FAMILIES,
    Family,
    make_output,
    make_record,
)
from taskexpert.testbed.model import LORA_TARGET_MODULES
from taskexpert.testbed.pretraining import pair_record, pairable_families
from taskexpert.train import TrainConfig, TrainResult, train

BASE_MODEL_NAME = "testbed/base"
FOREIGN_BASE_NAME = "testbed/foreign-base"
BIASED_LETTER = "B"
BIAS = 0.8


@dataclass(frozen=True)
class AdapterSpec:
    """How one bank adapter is made; `kind` and `families` are its ground truth."""

    name: str
    kind: str  # expert | duplicate | scaled | mixture | guesser | foreign
    families: tuple[str, ...]
    data: str = "rationale"  # rationale | answers | biased | mimic
    seed: int = 0
    r: int = 16
    alpha: int = 32
    duplicate_of: str | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)

    def truth(self) -> dict:
        entry = {
            "kind": self.kind,
            "families": list(self.families),
            "data": self.data,
            "r": self.r,
            "alpha": self.alpha,
            "seed": self.seed,
            "base_model": FOREIGN_BASE_NAME if self.kind == "foreign" else BASE_MODEL_NAME,
        }
        if self.duplicate_of:
            entry["duplicate_of"] = self.duplicate_of
        if self.note:
            entry["note"] = self.note
        return entry


def bank_specs(seed: int, r: int, alpha: int) -> list[AdapterSpec]:
    """The bank's adapters, experts first (the order they are trained in)."""
    specs = [
        AdapterSpec(f"expert_{name}", "expert", (name,), seed=seed + i, r=r, alpha=alpha)
        for i, name in enumerate(sorted(FAMILIES))
    ]
    specs += [
        AdapterSpec(
            "expert_mc_add_v2",
            "duplicate",
            ("mc_add",),
            seed=seed + 101,
            r=r,
            alpha=alpha,
            duplicate_of="expert_mc_add",
        ),
        AdapterSpec(
            "expert_reverse_v2",
            "duplicate",
            ("reverse",),
            seed=seed + 102,
            r=r,
            alpha=alpha,
            duplicate_of="expert_reverse",
        ),
        AdapterSpec(
            "expert_count_r4",
            "scaled",
            ("count",),
            seed=seed + 103,
            r=max(1, r // 4),
            alpha=alpha // 2,
            note="different rank and alpha",
        ),
        AdapterSpec(
            "mixture_letters",
            "mixture",
            ("shift", "consonants", "count"),
            seed=seed + 104,
            r=r,
            alpha=alpha,
        ),
        AdapterSpec(
            "mixture_numbers",
            "mixture",
            ("multiply", "list_sum", "story"),
            seed=seed + 105,
            r=r,
            alpha=alpha,
        ),
        AdapterSpec(
            "guesser_mc_add_answers",
            "guesser",
            ("mc_add",),
            data="answers",
            seed=seed + 106,
            r=r,
            alpha=alpha,
            note="answers without rationales",
        ),
        AdapterSpec(
            "guesser_mc_add_biased",
            "guesser",
            ("mc_add",),
            data="biased",
            seed=seed + 107,
            r=r,
            alpha=alpha,
            note=f"answers only; option {BIASED_LETTER} right {BIAS:.0%} of the time",
        ),
        AdapterSpec(
            "guesser_mc_add_mimic",
            "guesser",
            ("mc_add",),
            data="mimic",
            seed=seed + 108,
            r=r,
            alpha=alpha,
            note="format-mimic: rationales of other problems before the right letter",
        ),
        AdapterSpec(
            "foreign_add",
            "foreign",
            ("add",),
            seed=seed + 109,
            r=r,
            alpha=alpha,
            note="trained on another base model; shapes do not fit",
        ),
    ]
    return specs


def _biased(family: Family, rng: random.Random) -> dict:
    """A full-level problem whose answer is BIASED_LETTER with probability BIAS (the options
    are fixed, so the bias is in which problems are drawn)."""
    want_biased = rng.random() < BIAS
    for _ in range(10_000):
        problem = family.draw(rng, "full", "train")
        if (family.answer(problem) == BIASED_LETTER) == want_biased:
            return problem
    which = "with" if want_biased else "without"
    raise RuntimeError(f"family {family.name}: no problem {which} option {BIASED_LETTER} right")


def adapter_records(spec: AdapterSpec, n: int, pair_share: float = 0.0) -> list[Record]:
    """The training set of one adapter (deterministic per spec.seed).

    With `pair_share`, that share of a reasoning adapter's records puts its skill (bank
    wording) into a two-task prompt beside another family's task (pretraining wording, which
    the base already solves): real adapters see their skill inside longer prompts too, and
    without this an expert could not even copy its operand when a second task followed it.
    """
    rng = random.Random(spec.seed)
    families = [FAMILIES[name] for name in spec.families]
    pairable = pairable_families()
    records, previous = [], []
    for i in range(n):
        family = families[i % len(families)]
        if spec.data == "rationale" and family.name in pairable and rng.random() < pair_share:
            other = FAMILIES[rng.choice([f for f in pairable if f != family.name])]
            first, second = (family, other) if rng.random() < 0.5 else (other, family)
            records.append(
                pair_record(first, second, rng, 1.0, f"{spec.name}-{i}", bank_wording=family)
            )
            continue
        if spec.data == "biased":
            problem = _biased(family, rng)
        else:
            problem = family.draw(rng, "full", "train")
        record = make_record(family, problem, rng.choice(family.templates), f"{spec.name}-{i}")
        if spec.data in ("answers", "biased"):
            record = record.model_copy(
                update={"output": f"{ANSWER_PREFIX}{record.answer}.", "rationale": None}
            )
        elif spec.data == "mimic":
            # the rationale of an earlier problem: right shape, wrong content
            fake = previous[rng.randrange(len(previous))] if previous else record.rationale
            previous.append(record.rationale)
            record = record.model_copy(
                update={"output": make_output(fake, record.answer), "rationale": fake}
            )
        records.append(record)
    return records


def lora_config(r: int, alpha: int):
    return peft_glue.lora_config(r, alpha, LORA_TARGET_MODULES)


def train_lora(
    base_model,
    tokenizer,
    records: list[Record],
    out_dir: Path,
    *,
    r: int,
    alpha: int,
    seed: int,
    config: TrainConfig,
    base_name: str = BASE_MODEL_NAME,
) -> TrainResult:
    """Train a LoRA on a copy of `base_model` and save it (PEFT format) atomically."""
    peft_model = peft_glue.fresh_lora(
        base_model, lora_config(r, alpha), seed=seed, base_name=base_name
    )
    result = train(peft_model, tokenizer, records, config.model_copy(update={"seed": seed}))
    peft_glue.save_lora(peft_model, out_dir)
    return result


def train_adapter(
    spec: AdapterSpec,
    base_model,
    foreign_model,
    tokenizer,
    out_dir: Path,
    *,
    n_records: int,
    config: TrainConfig,
    pair_share: float = 0.0,
) -> TrainResult:
    """Build one bank adapter from its spec."""
    records = adapter_records(spec, n_records, pair_share)
    if spec.kind == "foreign":
        short = config.model_copy(update={"max_steps": max(1, (config.max_steps or 10) // 5)})
        return train_lora(
            foreign_model,
            tokenizer,
            records,
            out_dir,
            r=spec.r,
            alpha=spec.alpha,
            seed=spec.seed,
            config=short,
            base_name=FOREIGN_BASE_NAME,
        )
    return train_lora(
        base_model,
        tokenizer,
        records,
        out_dir,
        r=spec.r,
        alpha=spec.alpha,
        seed=spec.seed,
        config=config,
    )
