"""`taskexpert kcenter`: K-center greedy picks from a memory-mapped .npy embedding matrix."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from pydantic import Field

from taskexpert.configs import verb_command
from taskexpert.errors import InputError
from taskexpert.io import check_output, write_json
from taskexpert.recipes.common_options import RaySettings
from taskexpert.selection.kcenter import METRICS, kcenter_greedy


def _load_embeddings(path: Path) -> np.ndarray:
    """Memory-map the matrix (never read whole); pickled object arrays are refused."""
    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"cannot read as a .npy array: {exc}", path=path) from None
    if not isinstance(matrix, np.ndarray):  # an .npz archive
        raise InputError("expected a single .npy array, got an archive", path=path)
    return matrix


def _load_initial(path: Path) -> list[int]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read: {exc}", path=path) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc.msg}", path=path, line=exc.lineno) from None
    if not isinstance(value, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in value
    ):
        raise InputError("expected a JSON list of integer row indices", path=path)
    return value


class KcenterConfig(RaySettings):
    """kcenter's settings (its data, --embeddings/--k/--out/--initial, are plain options).

    `metric` is text, not a Literal, so a bad one stays a usage error of --metric (exit 2).
    """

    metric: str = Field("euclidean", description="euclidean or cosine (1 - cos).")
    seed: int = Field(0, description="Draws the first pick when there is no --initial.")
    half: bool = Field(False, description="Stream a float16 copy: half the bytes per pick.")


@verb_command(KcenterConfig)
def main(
    embeddings: Annotated[
        Path, typer.Option("--embeddings", help="(N, d) float32/float16 .npy, memory-mapped.")
    ],
    k: Annotated[int, typer.Option("--k", help="How many new rows to pick.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PICKS.json, written atomically.")],
    initial: Annotated[
        Path | None,
        typer.Option("--initial", help="JSON list of rows already chosen (never re-picked)."),
    ] = None,
    *,
    config: KcenterConfig,
) -> None:
    """K-center greedy (DiverseEvol's sampler) on an embedding matrix; picks in order to JSON."""
    metric, seed, half = config.metric, config.seed, config.half
    if metric not in METRICS:
        raise typer.BadParameter(f"use one of {', '.join(METRICS)}", param_hint="--metric")
    check_output(out)
    matrix = _load_embeddings(embeddings)
    chosen = _load_initial(initial) if initial is not None else []
    started = time.perf_counter()
    if config.ray and half:
        raise InputError("--half does not run on Ray; leave one of them out", field="half")
    try:
        if config.ray:
            from taskexpert.scaleout.select import ray_kcenter

            picks = ray_kcenter(config, matrix, k, initial=chosen, metric=metric, seed=seed)
        else:
            picks = kcenter_greedy(
                matrix,
                k,
                initial=chosen,
                metric=metric,
                seed=seed,
                storage="float16" if half else None,
            )
    except InputError as exc:
        source = initial if exc.field == "initial" else embeddings
        raise InputError(exc.reason, path=source, field=exc.field) from None
    seconds = time.perf_counter() - started
    summary = {
        "embeddings": str(embeddings),
        "rows": int(matrix.shape[0]),
        "dim": int(matrix.shape[1]),
        "k": k,
        "initial": len(chosen),
        "metric": metric,
        "seed": seed,
        "ray": {"address": config.ray, "actors": config.ray_actors} if config.ray else None,
        "storage": "float16" if half else str(matrix.dtype),
        "seconds": round(seconds, 3),
        "seconds_per_pick": round(seconds / k, 6) if k else 0.0,
    }
    write_json(out, {**summary, "picks": picks})
    typer.echo(json.dumps(summary))
