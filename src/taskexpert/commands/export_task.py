"""`taskexpert export-task`: write a test set as a task lm-evaluation-harness runs unchanged.

Only the options and the printing; the export is `recipes.export_task.run_export_task`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from taskexpert.configs import verb_command
from taskexpert.recipes.export_task import ExportTaskConfig, run_export_task


@verb_command(ExportTaskConfig)
def main(
    test: Path = typer.Option(..., "--test", help="Test records (JSONL with answers)."),
    out: Path = typer.Option(..., "--out", help="The task directory to write."),
    kshot: Path | None = typer.Option(
        None, "--kshot", help="K-shot records: the task's few-shot split (lm_eval --num_fewshot)."
    ),
    base: Path | None = typer.Option(
        None, "--base", help="Base model directory whose tokenizer sizes the generation length."
    ),
    *,
    config: ExportTaskConfig,
) -> None:
    """A task YAML and its data for `lm_eval --include_path OUT --tasks NAME`."""
    summary = run_export_task(test, out, kshot=kshot, base=base, **config.model_dump())
    answers = f" ({summary['answer_kind']} answers)" if summary["answer_kind"] else ""
    typer.echo(
        f"task {summary['task']}: {summary['kind']}{answers}, "
        f"{summary['n_test']} test and {summary['n_fewshot']} few-shot records"
    )
    typer.echo(f"wrote {summary['yaml']}")
    typer.echo(f"run: lm_eval --include_path {out} --tasks {summary['task']} --model hf ...")
