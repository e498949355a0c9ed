"""`taskexpert targets make`: the real target tasks' K-shot and test files, seeded.

Only the options and the printing; the carving is `importers.target_sets.make_targets`.
"""

from __future__ import annotations

from pathlib import Path

import typer


def main(
    out: Path = typer.Option(..., "--out", help="Directory for <target>/kshot.jsonl, test.jsonl."),
    data: Path = typer.Option(Path("../shared/data"), "--data", help="The shared data directory."),
    seed: int = typer.Option(0, "--seed", help="Seeds every carved K-shot and test subset."),
    target: list[str] = typer.Option(
        [], "--target", help="Only these targets (repeat; default: all four)."
    ),
    kshot: int = typer.Option(50, "--kshot", help="K-shot items per target."),
    gsm8k_test: int = typer.Option(200, "--gsm8k-test", help="GSM8K test items (seeded)."),
    test_size: int | None = typer.Option(
        None, "--test-size", help="Cap every test set at a seeded subset of this size."
    ),
) -> None:
    """Write ARC-Challenge, ARC-Easy, BoolQ and GSM8K K-shot and test files (same seed,
    same bytes)."""
    from taskexpert.importers.target_sets import make_targets

    summary = make_targets(
        data, out, seed=seed, targets=target or None, kshot=kshot, gsm8k_test=gsm8k_test,
        test_size=test_size,
    )  # fmt: skip
    for name, sizes in summary["targets"].items():
        typer.echo(f"{name:<14} K-shot {sizes['kshot']:>4}  test {sizes['test']:>5}  {out / name}")
