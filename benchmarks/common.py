"""Locations the benchmarks share, relative to the checkout (no absolute paths in code)."""

from __future__ import annotations

import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# The datasets live beside the checkout, as ../shared/data.
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# `taskexpert testbed build --out runs/testbed --preset standard` puts the testbed here.
DEFAULT_TESTBED = REPO_ROOT / "runs" / "testbed"


def standard_testbed(explicit: str | Path | None = None) -> Path | None:
    """The given testbed dir, or the default one when it is a finished standard build."""
    if explicit:
        return Path(explicit)
    marker = DEFAULT_TESTBED / "testbed.json"
    try:
        truth = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    # the last phase's marker (a build before run.json wrote `.complete` instead)
    done = any((DEFAULT_TESTBED / m).is_file() for m in (".steps/truth/COMPLETE.json", ".complete"))
    return DEFAULT_TESTBED if done and truth.get("build", {}).get("preset") == "standard" else None
