"""The real target tasks as K-shot and test files: ARC-Challenge, ARC-Easy, BoolQ, GSM8K.

Why a command and not files by hand: which items are the K-shot and which are scored decides
every number a run reports, so the carving is seeded, written down and byte-for-byte
reproducible (same seed, same files). Records are the project's own (importers.targets), so
`taskexpert evaluate` and `taskexpert run` score them as they are: records with `choices` by
option log-likelihood and by the generated letter, the rest by exact match on the answer.

- ARC-Challenge: K-shot = ROCKET's 50-shot with rationales (arc-c_cot_50shot); test = the
  llm-foundry ARC-Challenge test file, whole.
- ARC-Easy, BoolQ: a seeded K-shot of `kshot` items carved from the llm-foundry file; every
  other item is the test set (disjoint by construction).
- GSM8K: a seeded K-shot of `kshot` train items (with their rationales); a fixed seeded
  subset of `gsm8k_test` test items; exact match on the final number.

`test_size` caps every test set at a seeded subset (its own RNG stream, so the K-shot does not
move with it): scoring seven methods on 2,326 ARC-Easy items is hours on a 2-core CPU, and a
fixed 300 still separates methods 10 points apart (95% interval about +-5 points).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskexpert.errors import InputError
from taskexpert.importers.targets import import_gsm8k, import_llm_foundry, import_rocket_arc
from taskexpert.io import check_output, write_json
from taskexpert.records import Record, write_records

TARGETS = ("arc_challenge", "arc_easy", "boolq", "gsm8k")
KSHOT_FILE, TEST_FILE, SUMMARY_FILE = "kshot.jsonl", "test.jsonl", "targets.json"


def _pick(records: list[Record], count: int, rng: random.Random, what: Path) -> list[int]:
    """Indices of `count` records drawn by `rng`, in file order."""
    if count > len(records):
        raise InputError(f"asked for {count} items, the file has {len(records)}", what)
    return sorted(rng.sample(range(len(records)), count))


def _carve(records: list[Record], count: int, rng: random.Random, path: Path):
    chosen = set(_pick(records, count, rng, path))
    kshot = [r for i, r in enumerate(records) if i in chosen]
    return kshot, [r for i, r in enumerate(records) if i not in chosen]


def _arc_challenge(root: Path, rng: random.Random, kshot: int, gsm8k_test: int):
    shots = list(import_rocket_arc(root / "rocket-arc-kshot", split="cot_50shot"))
    test = list(import_llm_foundry(root / "llm-foundry-eval", name="arc_challenge"))
    if kshot < len(shots):
        shots = [shots[i] for i in _pick(shots, kshot, rng, root / "rocket-arc-kshot")]
    return shots, test


def _foundry(name: str, lettered: bool) -> Callable:
    def make(root: Path, rng: random.Random, kshot: int, gsm8k_test: int):
        folder = root / "llm-foundry-eval"
        records = list(import_llm_foundry(folder, name=name, lettered=lettered))
        return _carve(records, kshot, rng, folder)

    return make


def _gsm8k(root: Path, rng: random.Random, kshot: int, gsm8k_test: int):
    folder = root / "gsm8k"
    train = list(import_gsm8k(folder, split="train"))
    test = list(import_gsm8k(folder, split="test"))
    shots = [train[i] for i in _pick(train, kshot, rng, folder / "train.jsonl")]
    return shots, [test[i] for i in _pick(test, gsm8k_test, rng, folder / "test.jsonl")]


MAKERS: dict[str, Callable] = {
    "arc_challenge": _arc_challenge,
    "arc_easy": _foundry("arc_easy", lettered=True),
    "boolq": _foundry("boolq", lettered=False),
    "gsm8k": _gsm8k,
}


def make_targets(
    data_dir: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    targets: list[str] | None = None,
    kshot: int = 50,
    gsm8k_test: int = 200,
    test_size: int | None = None,
) -> dict[str, Any]:
    """Write OUT/<target>/kshot.jsonl and test.jsonl for each target; returns the summary
    (also OUT/targets.json). Each target draws from its own RNG (seed, name), so the files of
    one target do not change when another is added or left out."""
    root, out = Path(data_dir), Path(out)
    if not root.is_dir():
        raise InputError("shared data directory not found", root, field="data")
    check_output(out, directory=True)
    names = list(targets or TARGETS)
    unknown = [n for n in names if n not in MAKERS]
    if unknown:
        raise InputError(f"unknown target {unknown[0]!r} (known: {', '.join(TARGETS)})")
    if test_size is not None and test_size < 1:
        raise InputError(f"test_size must be at least 1, got {test_size}", field="test_size")
    made: dict[str, tuple[list[Record], list[Record]]] = {}
    for name in names:  # everything read and checked before anything is written
        shots, test = MAKERS[name](root, random.Random(f"{seed}:{name}"), kshot, gsm8k_test)
        if test_size is not None and test_size < len(test):
            capped = random.Random(f"{seed}:{name}:test").sample(range(len(test)), test_size)
            test = [test[i] for i in sorted(capped)]
        overlap = {r.id for r in shots} & {r.id for r in test}
        if overlap:  # cannot happen by construction; a changed importer must not slip it in
            raise InputError(f"{name}: K-shot and test share id {sorted(overlap)[0]!r}")
        made[name] = (shots, test)
    summary: dict[str, Any] = {
        "seed": seed, "data": str(root), "test_size": test_size, "targets": {}
    }  # fmt: skip
    for name, (shots, test) in made.items():
        write_records(out / name / KSHOT_FILE, shots)
        write_records(out / name / TEST_FILE, test)
        summary["targets"][name] = {"kshot": len(shots), "test": len(test)}
    write_json(out / SUMMARY_FILE, summary)
    return summary
