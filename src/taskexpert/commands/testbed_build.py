"""`taskexpert testbed build`: the offline tiny model, LoRA bank, pool and target tasks.

Its settings are `TestbedBuildConfig` (recipes/testbed_build.py), so they come from options
or `--config FILE.yaml` alike, and `--print-config` shows them; the output directory and
`--force` stay plain options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from taskexpert.configs import verb_command
from taskexpert.recipes.testbed_build import TestbedBuildConfig


@verb_command(TestbedBuildConfig)
def main(
    out: Annotated[
        Path, typer.Option("--out", help="directory to build (or resume) the testbed in")
    ],
    force: Annotated[
        bool, typer.Option("--force", help="rebuild even if a build is there")
    ] = False,
    *,
    config: TestbedBuildConfig,
) -> None:
    """Build the offline testbed (cached per preset and seed; resumes a half-built one)."""
    import time

    from taskexpert.recipes.testbed_build import run_testbed_build
    from taskexpert.testbed.baselines import format_table

    began = time.perf_counter()
    testbed = run_testbed_build(out, config, force=force)
    build = testbed.truth["build"]
    typer.echo(format_table(testbed.truth))
    typer.echo(
        f"\ntestbed {build['preset']} seed {build['seed']} in {testbed.root} "
        f"({time.perf_counter() - began:.1f}s this call; build timings {build['timings']})"
    )
