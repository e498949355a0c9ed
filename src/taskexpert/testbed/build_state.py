"""What a testbed build keeps between runs, so a killed build resumes and a finished one is reused.

The build is a run directory (`taskexpert.rundir`, like DiverseEvol and train-moe): `.lock`
(held for the whole build; a second build waits), `run.json` (the identity: preset, seed,
layout format and recipe id, plus the package version) and one in-place step per phase,
built at the fixed paths other code reads, with its marker under `.steps/<phase>/COMPLETE.json`
(the phase's record and the size and sha256 of every file it wrote). Each bank adapter is a
step of its own (`.steps/bank/<adapter>/COMPLETE.json`), so an interrupted bank keeps the
adapters it finished. The build is finished when every phase's marker checks out.

A directory in the format before this one (`.build/state.json` and `.complete`) is migrated
in place, nothing rebuilt: `migrate_legacy`. recipes/testbed_build.py runs the phases; this
module decides what may be kept.
"""

from __future__ import annotations

import json
from pathlib import Path

from taskexpert.errors import InputError
from taskexpert.io import is_temp_name, remove_tree
from taskexpert.rundir import LOCK_FILE, STEPS_DIR, CorruptStep, RunDir
from taskexpert.testbed.bank import bank_specs
from taskexpert.testbed.families import FAMILIES
from taskexpert.testbed.layout import (
    BANK_DIR,
    BASE_DIR,
    BASELINES_DIR,
    BASELINES_FILE,
    CALIBRATION_DIR,
    FORMAT_VERSION,
    LEGACY_MARKER,
    POOL_FILE,
    POOL_TRUTH_FILE,
    RUN_FILE,
    STATE_DIR,
    TASKS_DIR,
    TOKENIZER_DIR,
    TRUTH_FILE,
)
from taskexpert.testbed.presets import Preset, get_preset, recipe_id
from taskexpert.testbed.tasks import TARGETS

__all__ = ["LOCK_FILE", "PHASES", "is_complete", "run_directory"]

PHASES = ("tokenizer", "base", "data", "bank", "baselines", "truth")
RUN_VERSION = 1  # of run.json and the step markers
LEGACY_STATE_FILE = "state.json"  # in STATE_DIR, the format before run.json
PROBE_FILE = ".write_probe"
REMEDY = "pass force=True / --force to rebuild it, or choose another --out"

# what each phase writes, as paths in the build directory (its step marker covers them)
PHASE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "tokenizer": (TOKENIZER_DIR,),
    "base": (BASE_DIR,),
    "data": (POOL_FILE, TASKS_DIR, CALIBRATION_DIR, f"{STATE_DIR}/{POOL_TRUTH_FILE}"),
    "bank": (BANK_DIR,),
    "baselines": (BASELINES_DIR, BASELINES_FILE),
    "truth": (TRUTH_FILE,),
}


def run_directory(root: str | Path) -> RunDir:
    """The build directory as a run directory."""
    return RunDir(
        Path(root), kind="testbed build", version=RUN_VERSION, noun="phase", remedy=REMEDY
    )


def identity(preset: Preset, seed: int) -> dict:
    """What decides a build's content: the preset (by name and, through the recipe id, by
    every size in it and the generator's version), the seed and the layout's format."""
    return {
        "preset": preset.name,
        "seed": seed,
        "format": FORMAT_VERSION,
        "recipe": recipe_id(preset),
    }


def phase_meta(phase: str) -> dict:
    return {"phase": phase}


def adapter_step(name: str) -> str:
    """The in-place step of one bank adapter."""
    return f"{BANK_DIR}/{name}"


def phase_outputs(root: Path, phase: str) -> list[Path]:
    """Files whose presence a finished phase guarantees (what the format before run.json
    checked; `migrate_legacy` still does)."""
    if phase == "tokenizer":
        return [root / TOKENIZER_DIR / "tokenizer.json"]
    if phase == "base":
        return [root / BASE_DIR / "model.safetensors", root / BASE_DIR / "tokenizer.json"]
    if phase == "data":
        files = [root / POOL_FILE, root / STATE_DIR / POOL_TRUTH_FILE]
        for name in TARGETS:
            files += [
                root / TASKS_DIR / name / "kshot.jsonl",
                root / TASKS_DIR / name / "test.jsonl",
            ]
        return files + [root / CALIBRATION_DIR / f"{name}.jsonl" for name in FAMILIES]
    if phase == "bank":
        return [root / BANK_DIR / s.name / "adapter_model.safetensors" for s in bank_specs(0, 1, 1)]
    if phase == "baselines":
        return [root / BASELINES_FILE]
    return [root / TRUTH_FILE]


def check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / PROBE_FILE
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"cannot write the testbed here ({exc.strerror or exc})", root) from None


def is_build_dir(root: Path) -> bool:
    """Holds a testbed build, finished or not, in this format or the one before."""
    return (root / RUN_FILE).is_file() or (root / STATE_DIR).is_dir() or (root / STEPS_DIR).is_dir()


def refuse_foreign(root: Path) -> None:
    """Never build into, or leave a lock file in, a directory that holds something else."""
    # what a build killed before its identity was recorded may have left: the lock, the
    # write probe, temp entries of atomic writes and removals
    ours = {LOCK_FILE, PROBE_FILE}
    has_content = root.is_dir() and any(
        p.name not in ours and not is_temp_name(p.name) for p in root.iterdir()
    )
    if has_content and not is_build_dir(root):
        raise InputError(
            "directory is not empty and is not a testbed build; choose another --out", root
        )


def _same_build(stored: dict, current: dict) -> bool:
    """The same preset and seed (whatever recipe made them)."""
    return (stored.get("preset"), stored.get("seed")) == (current["preset"], current["seed"])


def refusal(root: Path, stored: dict, current: dict) -> InputError:
    """Why a directory holding another build is not reused."""
    what = (
        "was built by an older testbed recipe"
        if _same_build(stored, current)
        else f"holds a testbed built with preset {stored.get('preset')!r} seed {stored.get('seed')}"
    )
    return InputError(f"{what} ({REMEDY})", root / RUN_FILE)


def read_legacy_state(root: Path) -> dict | None:
    try:
        state = json.loads((root / STATE_DIR / LEGACY_STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return state if isinstance(state, dict) else None


def migrate_legacy(rundir: RunDir) -> bool:
    """Turn a build of the format before run.json (`.build/state.json` with the finished
    phases' records, `.complete` when finished) into this one in place: run.json from its
    fingerprint, a step marker per recorded phase whose files are all there (up to the first
    that is not) and per bank adapter on disk. Nothing is rebuilt. state.json goes last, so a
    migration cut short runs again. Call while holding the lock; True if it migrated."""
    root = rundir.path
    state = read_legacy_state(root)
    if state is None:
        if (root / STATE_DIR / LEGACY_STATE_FILE).exists():  # unreadable: nothing to keep
            (root / STATE_DIR / LEGACY_STATE_FILE).unlink(missing_ok=True)
        return False
    fingerprint = state.get("fingerprint") or {}
    rundir.record_identity(
        {k: fingerprint.get(k) for k in ("preset", "seed", "format", "recipe")},
        migrated_from=f"{STATE_DIR}/{LEGACY_STATE_FILE}",
    )
    phases = state.get("phases") or {}
    for adapter in sorted((root / BANK_DIR).glob("*/adapter_model.safetensors")):
        with rundir.step_in_place(
            adapter_step(adapter.parent.name), {"adapter": adapter.parent.name}
        ):
            pass
    for phase in PHASES:
        if phase not in phases or not all(p.exists() for p in phase_outputs(root, phase)):
            break
        meta = {**phase_meta(phase), "info": phases[phase]}
        with rundir.step_in_place(phase, meta, list(PHASE_OUTPUTS[phase])):
            pass
    (root / LEGACY_MARKER).unlink(missing_ok=True)
    (root / STATE_DIR / LEGACY_STATE_FILE).unlink()
    return True


def finished_phase(rundir: RunDir, phase: str, *, strict: bool = False) -> dict | None:
    """The record of a finished phase (its marker's `info`), None if it must run."""
    marker = rundir.finished_in_place(phase, phase_meta(phase), strict=strict)
    return None if marker is None else marker.get("info", {})


def is_complete(root: str | Path, preset: str | None = None, seed: int | None = None) -> bool:
    """True if `root` holds a finished build (of this preset and seed, when given) of the
    current layout and recipe, every phase's files as its marker lists them."""
    rundir = run_directory(root)
    try:
        stored = rundir.stored_identity()
    except InputError:
        return False
    if stored is None or stored.get("format") != FORMAT_VERSION:
        return False
    if preset is not None and stored.get("preset") != preset:
        return False
    if seed is not None and stored.get("seed") != seed:
        return False
    if preset is not None and stored.get("recipe") != recipe_id(get_preset(preset)):
        return False  # built by another version of the recipe: rebuild, do not reuse
    try:
        return all(finished_phase(rundir, phase, strict=True) is not None for phase in PHASES)
    except CorruptStep:
        return False


def built_by_older_recipe(root: str | Path, preset: str, seed: int) -> bool:
    """True if `root` holds a build (finished or not) of this preset and seed whose identity
    is not this checkout's: what `build_testbed` refuses without force."""
    try:
        stored = run_directory(root).stored_identity()
    except InputError:
        return False  # not a build of this format: left to the build's own refusal
    current = identity(get_preset(preset), seed)
    return stored is not None and _same_build(stored, current) and stored != current


def drop_bank(rundir: RunDir) -> None:
    """The bank's adapters and their markers go (they were trained on an older base)."""
    rundir.forget(BANK_DIR)
    remove_tree(rundir.path / BANK_DIR)
