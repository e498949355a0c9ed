"""`taskexpert config example`: a commented run config to start from, or one for a testbed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    testbed: Annotated[
        Path | None,
        typer.Option("--testbed", help="A built testbed: the config runs on it as it is."),
    ] = None,
    target: Annotated[
        str | None, typer.Option("--target", help="The testbed target task (with --testbed).")
    ] = None,
) -> None:
    """Print a commented `taskexpert run` config (every setting, with its default)."""
    from taskexpert.errors import InputError
    from taskexpert.recipes.run_config import dump_run_config
    from taskexpert.recipes.run_example import example_for_testbed, generic_example

    if (testbed is None) != (target is None):
        raise InputError("give --testbed and --target together", field="target")
    if testbed is None:
        typer.echo(dump_run_config(generic_example()), nl=False)
    else:
        title = f"taskexpert run on testbed {testbed}, target {target}"
        typer.echo(dump_run_config(example_for_testbed(testbed, target), title), nl=False)
