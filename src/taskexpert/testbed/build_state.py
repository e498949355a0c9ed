"""What a testbed build keeps between runs, so a killed build resumes and a finished one is reused.

`.build/state.json` records the finished phases under the build's fingerprint (preset, seed,
format and recipe); `phase_outputs` names the files each phase guarantees, checked before its
record is trusted. build.py runs the phases; this module decides what may be kept.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from taskexpert.errors import InputError
from taskexpert.io import is_temp_name, remove_tree, write_json
from taskexpert.testbed.bank import bank_specs
from taskexpert.testbed.families import FAMILIES
from taskexpert.testbed.layout import (
    BANK_DIR,
    BASE_DIR,
    BASELINES_DIR,
    BASELINES_FILE,
    CALIBRATION_DIR,
    FORMAT_VERSION,
    MARKER,
    POOL_FILE,
    POOL_TRUTH_FILE,
    STATE_DIR,
    TASKS_DIR,
    TOKENIZER_DIR,
    TRUTH_FILE,
)
from taskexpert.testbed.presets import Preset, get_preset, recipe_id
from taskexpert.testbed.tasks import TARGETS

PHASES = ("tokenizer", "base", "data", "bank", "baselines", "truth")
STATE_FILE = "state.json"
LOCK_FILE = ".lock"
PROBE_FILE = ".write_probe"


def fingerprint(preset: Preset, seed: int) -> dict:
    return {
        "preset": preset.name,
        "seed": seed,
        "format": FORMAT_VERSION,
        "recipe": recipe_id(preset),
    }


def read_state(root: Path) -> dict | None:
    path = root / STATE_DIR / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def phase_outputs(root: Path, phase: str) -> list[Path]:
    """Files whose presence a finished phase guarantees (checked before trusting it)."""
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


def refuse_foreign(root: Path) -> None:
    """Never build into, or leave a lock file in, a directory that holds something else."""
    # what a build killed before its state was saved may have left: the lock, the write
    # probe, temp entries of atomic writes and removals
    ours = {LOCK_FILE, PROBE_FILE}
    has_content = root.is_dir() and any(
        p.name not in ours and not is_temp_name(p.name) for p in root.iterdir()
    )
    if read_state(root) is None and has_content and not (root / STATE_DIR).is_dir():
        raise InputError(
            "directory is not empty and is not a testbed build; choose another --out", root
        )


def prepare(root: Path, fingerprint: dict, force: bool) -> dict:
    """The state to resume from; refuses to touch a directory that is not this build's."""
    refuse_foreign(root)
    state = read_state(root)
    if state is not None and state.get("fingerprint") != fingerprint:
        if not force:
            old = state.get("fingerprint", {})
            same = (old.get("preset"), old.get("seed")) == (
                fingerprint["preset"],
                fingerprint["seed"],
            )
            what = (
                "was built by an older testbed recipe"
                if same
                else f"holds a testbed built with preset {old.get('preset')!r} "
                f"seed {old.get('seed')}"
            )
            raise InputError(
                f"{what} (pass force=True / --force to rebuild it, or choose another --out)", root
            )
        state = None
    if state is None or force:
        for name in (MARKER, TRUTH_FILE, BASELINES_FILE, POOL_FILE):
            (root / name).unlink(missing_ok=True)
        # the state directory goes last: a build killed in here is still recognised as ours
        for name in (TOKENIZER_DIR, BASE_DIR, BANK_DIR, BASELINES_DIR, TASKS_DIR, CALIBRATION_DIR):
            remove_tree(root / name)
        remove_tree(root / STATE_DIR)
        state = {"fingerprint": fingerprint, "phases": {}}
    return state


def clear_leftovers(root: Path) -> None:
    """Remove the temp files and directories of a killed build (we hold the lock, so no other
    build is writing them); finished files never carry a temp name."""
    for directory, dirs, files in os.walk(root):
        for name in [d for d in dirs if is_temp_name(d)]:
            dirs.remove(name)
            shutil.rmtree(Path(directory) / name, ignore_errors=True)
        for name in files:
            if is_temp_name(name):
                (Path(directory) / name).unlink(missing_ok=True)


def save_state(root: Path, state: dict) -> None:
    write_json(root / STATE_DIR / STATE_FILE, state)


def is_complete(root: Path, preset: str | None = None, seed: int | None = None) -> bool:
    """True if `root` holds a finished build (of this preset and seed, when given)."""
    root = Path(root)
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if preset is not None and marker.get("preset") != preset:
        return False
    if seed is not None and marker.get("seed") != seed:
        return False
    if marker.get("format") != FORMAT_VERSION:
        return False
    if preset is not None and marker.get("recipe") != recipe_id(get_preset(preset)):
        return False  # built by another version of the recipe: rebuild, do not reuse
    return all(p.exists() for phase in PHASES for p in phase_outputs(root, phase))
