"""Stage 2 as a run: check the pools and K-shot set, retrieve, write the selection and summary.

Kept apart from the CLI (`commands/select_data.py` only parses and prints) so `demo` and Python
callers run the same thing; the retrieval itself is `taskexpert.selection.retrieve`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from taskexpert.configs import Cli, build_config, shared_field
from taskexpert.errors import InputError
from taskexpert.io import check_output, write_json
from taskexpert.recipes import common_options as options
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


class SelectDataConfig(options.RaySettings):
    """select-data's settings (its data, --pool/--kshot/--budget/--out, are plain options)."""

    dedup: float = Field(
        0.9, description="Drop near-duplicates with cosine above this (0 turns it off)."
    )
    mode: Literal["centroid", "max"] = Field(
        "centroid", description="centroid: cosine to the K-shot centroid; max: to any item."
    )
    encoder: str = Field(
        "auto",
        description="auto (onnx-int8 on a CPU, default on an accelerator), default (MiniLM, "
        "torch), onnx / onnx-int8 (MiniLM through ONNX Runtime), static (model2vec) or a "
        "model directory.",
    )
    two_stage: bool = Field(
        False, description="Static encoder shortlists, --encoder re-ranks the shortlist."
    )
    shortlist_factor: int = Field(
        10, description="Two-stage shortlist size as a multiple of the budget."
    )
    cache_dir: Annotated[Path | None, Cli(flag="--cache")] = Field(
        None,
        description="Embedding cache dir (default: $TASKEXPERT_CACHE/embeddings, or under "
        "~/.cache).",
    )
    use_cache: Annotated[bool, Cli(flag="--no-cache", help="Do not read or write the cache.")] = (
        Field(True, description="Read and write the embedding cache.")
    )
    device: str = shared_field(options.DEVICE)
    batch_size: int | None = Field(None, description="Encoder batch size.")
    threads: int | None = Field(
        None, ge=1, description="Encoder threads (torch and ONNX Runtime; default: all cores)."
    )


def run_select_data(
    pool_paths: Sequence[Path],
    kshot_path: Path,
    budget: int,
    out: Path,
    config: SelectDataConfig | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Validate inputs, select, then write the selection and its summary atomically.

    The settings are `config`, or SelectDataConfig's fields as keywords."""
    from taskexpert.artifacts import SelectionSummary
    from taskexpert.embed import EmbeddingCache, StaticEncoder, resolve_embedder
    from taskexpert.runtime import pinned_threads

    if not pool_paths:
        raise InputError("at least one --pool file is required", field="pool")
    config = config or build_config(SelectDataConfig, overrides=settings)
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

    if config.ray:
        result = _on_ray(pool, kshot, budget, config)
    else:
        embedder = resolve_embedder(config.encoder, device=config.device, threads=config.threads)
        shortlist = StaticEncoder() if config.two_stage else None
        cache = EmbeddingCache(config.cache_dir) if config.use_cache else None
        with pinned_threads(config.threads):
            result = _select(pool, kshot, budget, config, embedder, shortlist, cache)
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


def _on_ray(pool: PoolFiles, kshot: list[Record], budget: int, config: SelectDataConfig):
    """The same selection with the pool embedded and scored on Ray (taskexpert.scaleout)."""
    if config.two_stage:
        raise InputError("--two-stage does not run on Ray; leave one of them out", field="ray")
    from taskexpert.scaleout.select import ray_select_data

    return ray_select_data(
        config,
        pool,
        kshot,
        budget,
        mode=config.mode,
        dedup_threshold=None if config.dedup == 0 else config.dedup,
        encoder=config.encoder,
        device=config.device,
        cache_dir=config.cache_dir,
        batch_size=config.batch_size,
    )


def _select(pool, kshot, budget, config: SelectDataConfig, embedder, shortlist, cache):
    """select_data with the config's retrieval settings."""
    from taskexpert.selection.retrieve import select_data

    return select_data(
        pool,
        kshot,
        budget,
        mode=config.mode,
        dedup_threshold=None if config.dedup == 0 else config.dedup,
        embedder=embedder,
        shortlist_embedder=shortlist,
        shortlist_factor=config.shortlist_factor,
        cache=cache,
        batch_size=config.batch_size,
    )
