"""`taskexpert run`: the whole method, its baselines and the verdict, from one config file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    config: Annotated[
        Path, typer.Argument(help="Run config (YAML; `taskexpert config example` writes one).")
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Run directory [default: runs/<config name>]."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Reuse a run directory made with another config: rerun only what changed.",
        ),
    ] = False,
) -> None:
    """Select experts and data, train the mixture and the baselines, score them, give a verdict."""
    from taskexpert.progress import is_quiet
    from taskexpert.recipes.run import run_method
    from taskexpert.recipes.run_config import load_run_config

    settings = load_run_config(config)
    out = out if out is not None else Path("runs") / config.stem
    result = run_method(settings, out, resume=resume, progress=not is_quiet())
    typer.echo(report(result))


# how the winner was chosen, after its name (verdict.winner_rule)
RULE_NOTE = {"best": "", "simplest": ", the simplest within noise of the best"}


def report(result) -> str:
    """The verdict table, where the winner went, and what was rerun."""
    from taskexpert.verdict import table

    split = result.split
    lines = [
        f"scored on {split['test']} items ({split['source']}); "
        f"K-shot for selection and training: {split['kshot']}",
        *([leakage_line(result.leakage)] if result.leakage else []),
        "",
        table(result.verdict),
        "",
        f"run directory: {result.run_dir} (manifest.json, verdict.json, stages/)",
        f"winner ({result.verdict.winner}{RULE_NOTE[result.verdict.winner_rule]}): "
        f"{result.final_dir}",
        f"stages run: {len(result.ran)}, reused: {len(result.reused)}",
    ]
    if (result.run_dir / "report.html").is_file():
        lines.append(f"report: {result.run_dir / 'report.html'} (and report.md)")
    return "\n".join(lines)


def leakage_line(leakage: dict) -> str:
    """One line of the leakage check's counts (stages/leakage/leakage.json has examples)."""
    counts, checked = leakage["counts"], leakage["checked"]
    fate = f"{leakage['dropped']} dropped" if leakage["drop"] else "kept (leakage.drop: false)"
    return (
        f"leakage: {counts['any']} of {checked['selected'] + checked['kshot']} training records "
        f"match test items (exact {counts['exact']}, {leakage['thresholds']['ngram']}-gram "
        f"{counts['ngram']}, embedding {counts['embedding']}); {fate}"
    )
