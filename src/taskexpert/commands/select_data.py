"""`taskexpert select-data`: K-shot guided retrieval from canonical JSONL pools (Stage 2)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import typer

from taskexpert.errors import InputError
from taskexpert.io import check_output, write_json
from taskexpert.records import Record, load_records, read_records, write_records


class PoolFiles:
    """The records of several pool files, re-read on each iteration (never all held in memory)."""

    def __init__(self, paths: Sequence[str | Path]) -> None:
        self.paths = [Path(p) for p in paths]
        self._size: int | None = None

    def __iter__(self) -> Iterator[Record]:
        for path in self.paths:
            yield from read_records(path)

    def __len__(self) -> int:
        return self.validate()

    def validate(self) -> int:
        """Parse every line once (bad lines and duplicate ids fail before any embedding)."""
        if self._size is None:
            first_seen: dict[str, tuple[int, int]] = {}
            for k, path in enumerate(self.paths):
                count = 0
                for record in read_records(path):
                    count += 1
                    if record.id in first_seen:
                        where, line = first_seen[record.id]
                        raise InputError(
                            f"duplicate id {record.id!r} (first in {self.paths[where]}, "
                            f"record {line})",
                            path,
                            count,
                            "id",
                        )
                    first_seen[record.id] = (k, count)
                if count == 0:
                    raise InputError("no records", path)
            self._size = len(first_seen)
        return self._size


def summary_path(out: Path) -> Path:
    """`<out stem>.summary.json` beside the output."""
    return out.with_name(f"{out.stem}.summary.json")


def run_select_data(
    pool_paths: Sequence[Path],
    kshot_path: Path,
    budget: int,
    out: Path,
    *,
    mode: str = "centroid",
    dedup: float = 0.9,
    encoder: str = "default",
    two_stage: bool = False,
    shortlist_factor: int = 10,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    device: str = "auto",
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Validate inputs, select, then write the selection and its summary atomically."""
    from taskexpert.artifacts import SelectionSummary
    from taskexpert.embed import EmbeddingCache, StaticEncoder, resolve_embedder
    from taskexpert.selection.retrieve import select_data

    if not pool_paths:
        raise InputError("at least one --pool file is required", field="pool")
    out = Path(out)
    inputs = {p.resolve() for p in [*pool_paths, kshot_path]}
    if out.resolve() in inputs or summary_path(out).resolve() in inputs:
        raise InputError("output would overwrite an input file", out, field="out")
    check_output(out)
    kshot = load_records(kshot_path)
    pool = PoolFiles(pool_paths)
    size = pool.validate()
    if budget > size:
        where = pool_paths[0] if len(pool_paths) == 1 else ", ".join(map(str, pool_paths))
        raise InputError(f"budget {budget} exceeds the pool size {size}", where, field="budget")

    embedder = resolve_embedder(encoder, device=device)
    shortlist = StaticEncoder() if two_stage else None
    cache = EmbeddingCache(cache_dir) if use_cache else None
    result = select_data(
        pool,
        kshot,
        budget,
        mode=mode,
        dedup_threshold=None if dedup == 0 else dedup,
        embedder=embedder,
        shortlist_embedder=shortlist,
        shortlist_factor=shortlist_factor,
        cache=cache,
        batch_size=batch_size,
    )
    summary = SelectionSummary.model_validate(
        {
            "out": str(out),
            "pool_files": [str(p) for p in pool_paths],
            "kshot_file": str(kshot_path),
            **result.summary,
        }
    ).dump()
    write_records(out, result.records)
    write_json(summary_path(out), summary)
    return summary


def main(
    pool: list[Path] = typer.Option(
        ..., "--pool", help="Canonical JSONL pool file; repeat the option for several files."
    ),
    kshot: Path = typer.Option(..., "--kshot", help="K-shot records (canonical JSONL)."),
    budget: int = typer.Option(..., "--budget", help="How many pool records to select."),
    out: Path = typer.Option(..., "--out", help="Selected records (JSONL, with `score`)."),
    dedup: float = typer.Option(
        0.9, "--dedup", help="Drop near-duplicates with cosine above this (0 turns it off)."
    ),
    mode: str = typer.Option(
        "centroid", "--mode", help="centroid: cosine to the K-shot centroid; max: to any item."
    ),
    encoder: str = typer.Option(
        "default", "--encoder", help="default (MiniLM), static (model2vec) or a model directory."
    ),
    two_stage: bool = typer.Option(
        False, "--two-stage", help="Static encoder shortlists, --encoder re-ranks the shortlist."
    ),
    shortlist_factor: int = typer.Option(
        10, "--shortlist-factor", help="Two-stage shortlist size as a multiple of the budget."
    ),
    cache: Path | None = typer.Option(
        None,
        "--cache",
        help="Embedding cache dir (default: $TASKEXPERT_CACHE/embeddings, or under ~/.cache).",
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the cache."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, mps."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Encoder batch size."),
) -> None:
    """Select the pool records closest to a K-shot set, near-duplicates removed (Stage 2)."""
    summary = run_select_data(
        pool,
        kshot,
        budget,
        out,
        mode=mode,
        dedup=dedup,
        encoder=encoder,
        two_stage=two_stage,
        shortlist_factor=shortlist_factor,
        cache_dir=cache,
        use_cache=not no_cache,
        device=device,
        batch_size=batch_size,
    )
    typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))
