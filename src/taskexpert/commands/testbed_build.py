"""`taskexpert testbed build`: the offline tiny model, LoRA bank, pool and target tasks."""

from __future__ import annotations

from pathlib import Path

import typer


def main(
    out: Path = typer.Option(..., "--out", help="directory to build (or resume) the testbed in"),
    preset: str = typer.Option("micro", "--preset", help="micro (tests) or standard (demo)"),
    seed: int = typer.Option(0, "--seed", help="everything is deterministic per seed"),
    force: bool = typer.Option(False, "--force", help="rebuild even if a build is there"),
    threads: int = typer.Option(
        0, "--threads", help="torch threads (0: every core if the machine is quiet, else 1)"
    ),
) -> None:
    """Build the offline testbed (cached per preset and seed; resumes a half-built one)."""
    import time

    from taskexpert.testbed import build_testbed
    from taskexpert.testbed.baselines import format_table

    began = time.perf_counter()
    testbed = build_testbed(
        out, preset, seed, force=force, threads=threads or None
    )
    build = testbed.truth["build"]
    typer.echo(format_table(testbed.truth))
    typer.echo(
        f"\ntestbed {build['preset']} seed {build['seed']} in {testbed.root} "
        f"({time.perf_counter() - began:.1f}s this call; build timings {build['timings']})"
    )
