"""`taskexpert demo`: build (or reuse) the demo testbed and run the whole method on it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from taskexpert.recipes.demo import DEMO_PRESET, DEMO_TARGET


def main(
    out: Annotated[Path, typer.Option("--out", help="Run directory.")] = Path("runs/demo"),
    testbed: Annotated[
        Path, typer.Option("--testbed", help="Testbed directory (built there if missing).")
    ] = Path("runs/testbed-demo"),
    preset: Annotated[
        str | None, typer.Option("--preset", help=f"Testbed preset [{DEMO_PRESET}].")
    ] = None,
    target: Annotated[
        str | None, typer.Option("--target", help=f"Testbed target task [{DEMO_TARGET}].")
    ] = None,
    seeds: Annotated[
        list[int] | None, typer.Option("--seed", help="A seed (repeat for several) [0 1 2].")
    ] = None,
    budget: Annotated[
        int | None, typer.Option("--budget", help="Pool records to select [300].")
    ] = None,
) -> None:
    """The whole method on a two-skill testbed target: experts, data, mixture, baselines,
    verdict. Builds the testbed on first use; reruns reuse every finished stage."""
    from taskexpert.commands.run import report
    from taskexpert.progress import is_quiet
    from taskexpert.recipes.demo import run_demo

    given = {"preset": preset, "target": target, "seeds": seeds or None, "budget": budget}
    chosen = {key: value for key, value in given.items() if value is not None}
    result, config_path = run_demo(out, testbed, progress=not is_quiet(), **chosen)
    typer.echo(report(result))
    typer.echo(f"config: {config_path} (edit it and run `taskexpert run {config_path} --resume`)")
