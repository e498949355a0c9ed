"""Settings shared by every run that loads a base model, written once (flag, default, help).

Typer-free so recipes' configs (and the run config's `runtime` section) use them through
`configs.shared_field`; verb_command turns those fields into the verbs' options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SharedOption:
    """One shared setting: its command-line flag, default and help."""

    flag: str
    default: Any
    help: str


ALLOW_PICKLE = SharedOption(
    "--allow-pickle", False, "Also load pickle (.bin) weights; they can run code."
)
TRUST_REMOTE_CODE = SharedOption(
    "--trust-remote-code", False, "Run model code shipped with the base model."
)
DEVICE = SharedOption("--device", "auto", "auto, cpu, cuda, mps.")
DTYPE = SharedOption("--dtype", "float32", "float32, bfloat16 or float16.")
ALLOW_OTHER_BASE = SharedOption(
    "--allow-other-base",
    False,
    "Use adapters whose adapter_config.json names another base model (refused otherwise).",
)
