"""The items a run scores its methods on, and the input checks done before anything is written.

Why apart: the split decides what every number of the run means (no K-shot item that is scored
may be used for selection or training), so it is one small module to read and test.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from taskexpert.errors import InputError
from taskexpert.recipes.run_config import RunConfig
from taskexpert.records import Record, load_records

NEEDS_DATA = ("moe", "plain_lora")  # methods that train on the selected pool data


@dataclass(frozen=True)
class Split:
    """The K-shot the run may learn from and the items every method is scored on."""

    kshot: list[Record]
    test: list[Record]
    source: str  # "test set" or "held-out K-shot"


def split_kshot(config: RunConfig) -> Split:
    """The test set when given; else a seeded `holdout` share of the K-shot (never used for
    selection or training). Reads and checks every input file the split needs."""
    kshot = load_records(config.kshot)
    if not kshot:
        raise InputError("no records", config.kshot, field="kshot")
    if config.test is not None:
        test = load_records(config.test)
        if not test:
            raise InputError("the test set has no records", config.test, field="test")
        overlap = {r.id for r in kshot} & {r.id for r in test}
        if overlap:
            raise InputError(
                f"{len(overlap)} test records share an id with the K-shot "
                f"(e.g. {sorted(overlap)[0]!r}): scoring on them would reward memorising",
                config.test,
                field="test",
            )
        return Split(kshot, test, "test set")
    order = sorted(kshot, key=lambda r: r.id)
    random.Random(0).shuffle(order)
    held = round(len(order) * config.holdout)
    if held < 1 or held >= len(order):
        raise InputError(
            f"holdout {config.holdout} of {len(order)} K-shot records leaves an empty part; "
            "give a test set or more K-shot records",
            config.kshot,
            field="holdout",
        )
    test_ids = {r.id for r in order[:held]}
    return Split(
        [r for r in kshot if r.id not in test_ids],
        [r for r in kshot if r.id in test_ids],
        "held-out K-shot",
    )


def check_scorable(records: list[Record], path: Path, metric: str) -> None:
    """Every scored record has what its score needs, checked before any training: a gold
    answer for exact match; with choices (metric auto) or always (multiple_choice), non-empty
    options and an answer that names one of them. The error names file, record and field."""
    from taskexpert.evaluate import gold_answer, gold_choice
    from taskexpert.prompts import infer_answer_kind

    for number, record in enumerate(records, start=1):
        try:
            if metric == "multiple_choice" and not record.choices:
                raise InputError(
                    f"record {record.id!r} has no choices (evaluate.metric: multiple_choice)",
                    field="choices",
                )
            if record.choices and metric != "exact_match":
                gold_choice(record)
            gold_answer(record, infer_answer_kind(record))  # exact match scores every item
        except InputError as exc:
            raise InputError(
                f"cannot score this item: {exc.reason}", path, number, exc.field
            ) from None


def check_inputs(config: RunConfig) -> Split:
    """Every input readable and consistent, before anything is written."""
    from taskexpert.recipes.select_data import PoolFiles

    for path, key in ((config.bank, "bank"), (config.kshot, "kshot")):
        if not Path(path).exists():
            raise InputError("not found", path, field=key)
    if config.base != "smollm2" and not Path(config.base).exists():
        raise InputError("base model not found", config.base, field="base")
    for pool in config.pools:
        if not pool.is_file():
            raise InputError("pool file not found", pool, field="pools")
    if config.test is not None and not config.test.is_file():
        raise InputError("test file not found", config.test, field="test")
    split = split_kshot(config)
    scored = config.test if config.test is not None else config.kshot
    check_scorable(split.test, scored, config.evaluate.metric)
    if any(m in config.methods for m in NEEDS_DATA):
        size = PoolFiles(config.pools).validate()
        if config.budget > size:
            raise InputError(
                f"budget {config.budget} exceeds the pool size {size}",
                config.pools[0],
                field="budget",
            )
    return split
