"""`taskexpert demo`: the whole method on a small testbed, built (or reused) first.

Why a testbed: it is offline, builds in minutes on a laptop's CPU, and knows its ground truth
(which experts hold which skill), so the demo shows every stage and an honest verdict without
downloading a model. The config it runs is written next to the run directory, to edit and rerun
with `taskexpert run`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from taskexpert.io import atomic_open

if TYPE_CHECKING:
    from taskexpert.recipes.run import RunResult

DEMO_PRESET = "demo"
# a two-skill target: no single expert answers both parts, so it is where routing between
# experts can show (its two experts are the ones the demo preset trains longer)
DEMO_TARGET = "initials_and_max"
# The demo base is small: on the first demo build for initials_and_max (initials expert at 400
# steps) the mixture over 3 seeds scored 0.011 after 5 epochs (the testbed default), 0.039
# after 10 and 0.117 after 15, the plain LoRA 0.000, 0.000 and 0.006 (testbed README).
DEMO_EPOCHS = 15.0

log = logging.getLogger(__name__)


def run_demo(
    out: str | Path = "runs/demo",
    testbed: str | Path = "runs/testbed-demo",
    *,
    preset: str = DEMO_PRESET,
    target: str = DEMO_TARGET,
    seeds: list[int] | None = None,
    budget: int | None = None,
    progress: bool = True,
) -> tuple[RunResult, Path]:
    """Build or reuse the testbed, write the run config beside `out`, run it (resuming).

    Returns the run's result and the config file written."""
    # imported here: the CLI imports this module for its defaults, and these pull in torch
    from taskexpert.recipes.run import run_method
    from taskexpert.recipes.run_config import dump_run_config
    from taskexpert.recipes.run_example import example_for_testbed
    from taskexpert.testbed import build_testbed
    from taskexpert.testbed.build_state import built_by_older_recipe

    # the demo's testbed is a cache of this checkout's recipe: after an update that changed
    # the recipe, rebuild it rather than stop a newcomer with `--force`
    stale = built_by_older_recipe(testbed, preset, 0)
    if stale:
        log.warning("%s was built by an older testbed recipe: rebuilding it", testbed)
    bed = build_testbed(testbed, preset, 0, force=stale, progress=progress)
    config = example_for_testbed(bed.root, target, budget, seeds=seeds, epochs=DEMO_EPOCHS)
    out = Path(out)
    config_path = out.with_name(f"{out.name}.yaml")
    config_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(config_path) as handle:
        handle.write(dump_run_config(config, f"taskexpert demo on {preset} testbed, {target}"))
    return run_method(config, out, resume=True, progress=progress), config_path
