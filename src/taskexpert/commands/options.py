"""CLI options shared by every verb that loads a base model, so they read alike.

The settings themselves (flag, default, help) are written once in
`taskexpert.recipes.common_options`; this module only makes them typer options.
"""

from __future__ import annotations

from typing import Any

import typer

from taskexpert.recipes import common_options
from taskexpert.recipes.common_options import SharedOption


def typer_option(spec: SharedOption) -> Any:
    """The typer option for a shared setting."""
    return typer.Option(spec.default, spec.flag, help=spec.help)


ALLOW_PICKLE = typer_option(common_options.ALLOW_PICKLE)
TRUST_REMOTE_CODE = typer_option(common_options.TRUST_REMOTE_CODE)
DEVICE = typer_option(common_options.DEVICE)
DTYPE = typer_option(common_options.DTYPE)
ALLOW_OTHER_BASE = typer_option(common_options.ALLOW_OTHER_BASE)
