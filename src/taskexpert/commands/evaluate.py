"""`taskexpert evaluate`: exact match (and multiple choice) of a base, a LoRA or a mixture.

Only the options and the printing; the run is `recipes.evaluate.run_evaluate`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from taskexpert.configs import verb_command
from taskexpert.recipes.evaluate import EvaluateVerbConfig, run_evaluate


@verb_command(EvaluateVerbConfig)
def main(
    base: str = typer.Option(..., "--base", help="Base model directory, or 'smollm2'."),
    test: Path | None = typer.Option(
        None, "--test", help="Test records (JSONL with answers); or --harness."
    ),
    out: Path = typer.Option(..., "--out", help="Where to write eval.json."),
    adapter: Path | None = typer.Option(None, "--adapter", help="A PEFT LoRA adapter directory."),
    moe: Path | None = typer.Option(None, "--moe", help="A mixture directory from train-moe."),
    routing: Path | None = typer.Option(
        None, "--routing", help="With --moe: also write its routing diagnostics (JSON) here."
    ),
    *,
    config: EvaluateVerbConfig,
) -> None:
    """Exact match with the task's extractor, plus multiple choice where records have choices;
    or lm-evaluation-harness tasks (--harness)."""
    report = run_evaluate(
        base, test, out, adapter=adapter, moe=moe, routing=routing, **config.model_dump()
    )
    if config.harness is not None:
        for task, metrics in report["scores"].items():
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "sample_len")
            typer.echo(f"{task}: {shown} (n={metrics.get('sample_len', '?')})")
        typer.echo(f"wrote {out}")
        return
    line = f"exact match {report['exact_match']:.4f} ({report['correct']}/{report['n']})"
    if "multiple_choice_accuracy" in report:
        line += (
            f"; multiple choice {report['multiple_choice_accuracy']:.4f} "
            f"(length-normalised {report['multiple_choice_accuracy_norm']:.4f}, "
            f"n={report['n_multiple_choice']})"
        )
    typer.echo(line)
    typer.echo(f"wrote {out}")
    if routing is not None:
        typer.echo(f"wrote {routing} (routing diagnostics; a collapse is logged as a warning)")
