"""Example run configs: a generic one to edit, and one that runs on a built testbed target.

Why two: a new user wants a file to start from that documents every setting; a user with a
testbed wants a config that runs as it is, with settings that suit the testbed's small model
(the paper's defaults, lr 5e-5 at batch 64 for a 7B model, barely move a 0.3M-weight model).
"""

from __future__ import annotations

from pathlib import Path

from taskexpert.recipes.run_config import RunConfig, validate_run_config

# The testbed's model is tiny and its tasks short: a higher learning rate, shorter sequences.
# Measured on the demo preset (docs in the testbed README); the same for every method.
TESTBED_TRAIN = {
    "lr": 3e-3,
    "batch_size": 16,
    "micro_batch_size": 16,
    "max_length": 192,
    "epochs": 5.0,
    "checkpoint_every": 0,
    "log_every": 10,
}
TESTBED_BUDGET = 300


def generic_example() -> RunConfig:
    """Placeholders for a real model: SmolLM2, a bank folder, a K-shot and a pool."""
    return RunConfig(
        base="smollm2",
        bank=Path("bank"),
        kshot=Path("kshot.jsonl"),
        pools=[Path("pool.jsonl")],
        budget=1000,
    )


def example_for_testbed(
    testbed: str | Path,
    target: str,
    budget: int | None = None,
    *,
    seeds: list[int] | None = None,
    epochs: float | None = None,
) -> RunConfig:
    """A config that runs on `target` of the built testbed at `testbed` (absolute paths);
    `seeds` and `epochs` replace the defaults and are validated with the rest."""
    from taskexpert.testbed.layout import Testbed

    bed = Testbed.load(Path(testbed).resolve())
    kshot, test = bed.kshot_path(target), bed.test_path(target)  # an unknown target fails here
    pool_size = sum(1 for line in bed.pool_path.open(encoding="utf-8") if line.strip())
    data = {
        "base": str(bed.base_dir),
        "bank": bed.bank_dir,
        "kshot": kshot,
        "pools": [bed.pool_path],
        "test": test,
        "budget": min(budget or TESTBED_BUDGET, pool_size),
        "train": TESTBED_TRAIN if epochs is None else {**TESTBED_TRAIN, "epochs": epochs},
        "evaluate": {"batch_size": 64},
    }
    if seeds is not None:
        data["seeds"] = list(seeds)
    return validate_run_config(data)
