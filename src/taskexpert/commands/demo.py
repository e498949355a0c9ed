"""`taskexpert demo`: the pipeline on the built-in sample, no ../shared needed (for now Stage 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from taskexpert.data import SAMPLE_KSHOT, SAMPLE_POOL


def format_report(summary: dict[str, Any]) -> str:
    """The source mix and timings as a short human-readable block."""
    selected = summary["selected"]
    lines = [
        f"selected {selected} of {summary['pool_size']} pool records for "
        f"{summary['kshot_size']} GSM8K K-shot items (encoder {summary['encoder']})",
        "source mix:",
    ]
    width = max((len(s) for s in summary["selected_per_source"]), default=0)
    for source, count in summary["selected_per_source"].items():
        lines.append(f"  {source:<{width}}  {count:>5}  {100 * count / max(selected, 1):5.1f}%")
    lines.append(
        f"removed as near-duplicates (cosine > {summary['dedup_threshold']}): "
        f"{summary['removed_duplicates']}"
    )
    if summary.get("vendi_score") is not None:
        lines.append(f"Vendi score of the selection: {summary['vendi_score']}")
    lines.append(
        "timings: "
        + ", ".join(f"{k.removesuffix('_s')} {v:.2f}s" for k, v in summary["timings_s"].items())
    )
    return "\n".join(lines)


def main(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run directory for the outputs."),
    budget: int = typer.Option(100, "--budget", help="How many sample pool records to select."),
    encoder: str = typer.Option(
        "default", "--encoder", help="default (MiniLM), static (model2vec) or a model directory."
    ),
    cache: Path | None = typer.Option(
        None,
        "--cache",
        help="Embedding cache dir (default: $TASKEXPERT_CACHE/embeddings, or under ~/.cache).",
    ),
) -> None:
    """Run select-data on the built-in sample (GSM8K K-shot); print the source mix and timings."""
    from taskexpert.recipes.select_data import run_select_data, summary_path

    selected = Path(out) / "selected.jsonl"
    summary = run_select_data(
        [SAMPLE_POOL], SAMPLE_KSHOT, budget, selected, encoder=encoder, cache_dir=cache
    )
    typer.echo(format_report(summary))
    typer.echo(f"wrote {selected} and {summary_path(selected)}")
