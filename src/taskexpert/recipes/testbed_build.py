"""The testbed build as a run: `TestbedBuildConfig` (the verb's settings) and
`run_testbed_build`, its one entry point (`taskexpert testbed build`, `build_testbed`).

Run directory (`taskexpert.rundir`, like the DiverseEvol recipe and train-moe):

- **Lock**: held for the whole build with `wait=True`: a second build of the same directory
  waits, then finds the first one's result.
- **Identity** (`run.json`): preset name, seed, layout format and recipe id (a hash of every
  size in the preset and of the generator's version), plus the package version. Another
  preset or seed, or an older recipe, is refused unless `force` (which starts over).
- **Steps in place**: each phase (tokenizer -> base -> data -> bank -> baselines -> truth)
  writes at the fixed paths other code reads, then its marker `.steps/<phase>/COMPLETE.json`
  (its record: seconds, threads, what it measured; and size and sha256 of its files). A rerun
  keeps the phases up to the first whose marker is missing or whose files changed and reruns
  every later one; each bank adapter has a marker of its own, so a bank cut short keeps the
  adapters it finished. When a phase before the bank reruns, the adapters trained on the old
  base go at once (a build killed before the bank phase must not resume with them).
- **Legacy**: a directory of the format before (`.build/state.json`, `.complete`) is migrated
  in place and reused, nothing rebuilt (`build_state.migrate_legacy`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from taskexpert.rundir import clear_leftovers
from taskexpert.runtime import ThreadGovernor, adaptive_threads, pinned_threads
from taskexpert.testbed import build as phases
from taskexpert.testbed.build_state import (
    PHASE_OUTPUTS,
    PHASES,
    check_writable,
    drop_bank,
    finished_phase,
    identity,
    is_complete,
    migrate_legacy,
    phase_meta,
    refusal,
    refuse_foreign,
    run_directory,
)
from taskexpert.testbed.layout import BANK_DIR, Testbed
from taskexpert.testbed.presets import PRESETS, get_preset


class TestbedBuildConfig(BaseModel):
    """testbed build's settings (its data, --out, and the action --force are plain options)."""

    __test__: ClassVar[bool] = False  # not a pytest test class, despite the name
    model_config = ConfigDict(extra="forbid")

    preset: str = Field(
        "micro",
        description="micro (tests, seconds), demo (make demo, minutes) or standard (the "
        "calibrated one, for benchmarks); see the testbed README",
    )
    seed: int = Field(0, description="everything is deterministic per seed")
    threads: int = Field(
        0,
        ge=0,
        description="torch threads (0: follow the machine's load, rechecked every 20 s while "
        "a phase runs)",
    )


def known_presets() -> list[str]:
    return sorted(PRESETS)


def run_testbed_build(
    out: str | Path,
    config: TestbedBuildConfig,
    *,
    force: bool = False,
    progress: bool = True,
) -> Testbed:
    """Build (or return the cached, or resume the half-built) testbed in `out`."""
    spec = get_preset(config.preset)
    seed = config.seed
    root = Path(out)
    current = identity(spec, seed)
    if not force and is_complete(root, spec.name, seed):
        return Testbed.load(root)
    refuse_foreign(root)
    check_writable(root)
    rundir = run_directory(root)
    with rundir.open(wait=True):
        migrate_legacy(rundir)
        if not force and is_complete(root, spec.name, seed):
            return Testbed.load(root)  # built (or migrated) by another process while we waited
        stored = rundir.stored_identity()
        if stored is not None and rundir.changes(current):
            if not force:
                raise refusal(root, stored, current)
            rundir.reset()
        elif force:
            rundir.reset()
        clear_leftovers(root, recursive=True)  # a killed build's temp files: we hold the lock
        rundir.record_identity(current, preset_config=spec.model_dump(mode="json"))
        _run_phases(rundir, spec, seed, config.threads or None, progress)
    return Testbed.load(root)


@contextlib.contextmanager
def _phase_threads(threads: int | None) -> Iterator[ThreadGovernor | None]:
    """`threads` given: the phase runs pinned to it. Else the count follows the machine's load
    while the phase runs (issue 20: picked once on a busy machine, it kept a quiet one at one
    thread for a 50-minute pretraining)."""
    if threads:
        with pinned_threads(threads, blas=False):
            yield None
    else:
        with adaptive_threads() as governor:
            yield governor


def _run_phases(rundir, spec, seed: int, threads: int | None, progress: bool) -> None:
    root = rundir.path
    state: dict = {"fingerprint": identity(spec, seed), "phases": {}}
    # each phase records the threads it ran with, so testbed.json reports what was used
    count: dict[str, int] = {}  # the current phase's, set as it starts
    rerun = False  # once a phase reruns, every later phase reruns too
    runners = {
        "tokenizer": lambda: phases._phase_tokenizer(root, spec, seed, progress),
        "base": lambda: phases._phase_base(root, spec, seed, progress),
        "data": lambda: phases._phase_data(root, spec, seed, progress),
        "bank": lambda: phases._phase_bank(
            root,
            spec,
            seed,
            progress,
            keep_existing=not rerun,
            workers=phases.bank_workers(count["threads"]) if spec.parallel_bank else 1,
        ),
        "baselines": lambda: phases._phase_baselines(root, spec, seed, progress),
        "truth": lambda: phases._phase_truth(root, spec, seed, state, count["threads"]),
    }
    for index, phase in enumerate(PHASES):
        info = None if rerun else finished_phase(rundir, phase)
        if info is not None:
            state["phases"][phase] = info
            continue
        if not rerun:  # the first phase to run: no later phase's marker may outlive it
            for later in PHASES[index:]:
                rundir.forget(later, nested=later != BANK_DIR)
            if index < PHASES.index("bank"):
                # adapters trained on the old base must go now, not when the bank phase
                # starts: a build killed in between would resume and keep them
                drop_bank(rundir)
        phases._log(f"testbed: phase {phase} ...", progress)
        meta = phase_meta(phase)
        began = time.perf_counter()
        with rundir.step_in_place(phase, meta, list(PHASE_OUTPUTS[phase])):
            with _phase_threads(threads) as governor:
                count["threads"] = governor.threads if governor else threads
                record = runners[phase]()
            record["seconds"] = time.perf_counter() - began
            record["threads"] = count["threads"]
            if governor is not None:  # the count followed the load while the phase ran
                record["threads"] = max(n for _, n in governor.changes)
                record["thread_changes"] = governor.changes
            state["phases"][phase] = record
            meta["info"] = record  # the marker is written as the block ends
        took = f"{record['seconds']:.1f}s on {record['threads']} thread(s)"
        phases._log(f"testbed: phase {phase} done in {took}", progress)
        rerun = True
