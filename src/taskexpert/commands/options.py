"""CLI options shared by every verb that loads a base model, defined once so they read alike."""

from __future__ import annotations

import typer

ALLOW_PICKLE = typer.Option(
    False, "--allow-pickle", help="Also load pickle (.bin) weights; they can run code."
)
TRUST_REMOTE_CODE = typer.Option(
    False, "--trust-remote-code", help="Run model code shipped with the base model."
)
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda, mps.")
DTYPE = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16.")
ALLOW_OTHER_BASE = typer.Option(
    False,
    "--allow-other-base",
    help="Use adapters whose adapter_config.json names another base model (refused otherwise).",
)
