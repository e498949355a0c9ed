"""What the verbs call with `--ray`: K-center and select-data composed from the scale-out
pieces, each inside one Ray connection (`cluster.ray_cluster`).

Only imported when `--ray` is given; everything Ray-specific is imported inside the functions.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from taskexpert.errors import InputError
from taskexpert.recipes.common_options import RaySettings
from taskexpert.records import Record


def ray_kcenter(
    settings: RaySettings,
    matrix: np.ndarray,
    k: int,
    initial: Sequence[int] | None = None,
    metric: str = "euclidean",
    seed: int = 0,
    exclude: Sequence[int] | np.ndarray | None = None,
    progress: bool = True,
    on_pick=None,
) -> list[int]:
    """`kcenter_greedy`'s picks, the matrix cut into `ray_actors` shards on the chunk grid."""
    from taskexpert.scaleout.cluster import check_resources, ray_cluster
    from taskexpert.scaleout.kcenter import sharded_kcenter
    from taskexpert.scaleout.shards import matrix_shards
    from taskexpert.selection.kcenter import _check_matrix, default_chunk_rows

    matrix = _check_matrix(matrix)
    rows = default_chunk_rows(matrix.shape[1])
    shards = matrix_shards(matrix, settings.ray_actors, rows)
    with ray_cluster(settings.ray, cpus_needed=len(shards)) as ray:
        check_resources(ray, len(shards), 1, 0)
        return sharded_kcenter(
            ray, shards, k, initial, metric, seed, exclude, progress, rows, on_pick
        )


def shard_dir(cache_dir: Path | None, encoder_name: str, texts: list[str]) -> Path:
    """Where a pool's embedding shards live: under the cache, by encoder and pool content."""
    from taskexpert.embed import cache_root
    from taskexpert.scaleout.shards import text_digest

    root = Path(cache_dir) if cache_dir is not None else cache_root() / "embeddings"
    return root / "ray-shards" / encoder_name / text_digest(texts)[:16]


def ray_select_data(
    settings: RaySettings,
    pool,
    kshot: list[Record],
    budget: int,
    *,
    mode: str = "centroid",
    dedup_threshold: float | None = 0.9,
    encoder: str = "auto",
    device: str = "auto",
    cache_dir: Path | None = None,
    batch_size: int | None = None,
    progress: bool = True,
):
    """`selection.retrieve.select_data`'s result with the pool embedded by Ray Data into
    shards (kept for reruns under the cache) and scored, ranked and deduplicated on Ray."""
    from taskexpert.embed import embed_records, l2_normalize, resolve_embedder
    from taskexpert.scaleout.cluster import check_resources, gpus_per_actor, ray_cluster
    from taskexpert.scaleout.embed import actor_encoder, embed_to_shards
    from taskexpert.selection.retrieve import (
        SelectionResult,
        _check_args,
        _records_at,
        _score_stats,
        _vendi,
    )

    began = time.perf_counter()
    _check_args(kshot, budget, mode, dedup_threshold, 1)
    kshot_texts = {r.text for r in kshot}
    texts, sources, excluded = [], Counter(), []
    for position, record in enumerate(pool):
        texts.append(record.text)
        sources[record.source or "unknown"] += 1
        if record.text in kshot_texts:
            excluded.append(position)
    eligible = len(texts) - len(excluded)
    if budget > eligible:
        detail = f" after excluding {len(excluded)} K-shot duplicates" if excluded else ""
        raise InputError(
            f"budget {budget} exceeds the pool size {eligible}{detail}", field="budget"
        )
    timings: dict[str, float] = {}
    with ray_cluster(settings.ray, cpus_needed=settings.ray_actors + 1) as ray:
        gpus = gpus_per_actor(ray, settings.ray_gpus_per_actor)
        check_resources(ray, settings.ray_actors, 1, gpus)
        encoder = actor_encoder(encoder, gpus)  # the K-shot uses what the actors run
        embedder = resolve_embedder(encoder, device=device)
        t = time.perf_counter()
        kshot_vectors = l2_normalize(embed_records(kshot, embedder, None, batch_size, False))
        timings["embed_kshot_s"] = time.perf_counter() - t
        directory = shard_dir(cache_dir, embedder.name, texts)
        t = time.perf_counter()
        shards, _, counts = embed_to_shards(
            ray, texts, directory, encoder, actors=settings.ray_actors, gpus_per_actor=gpus,
            device=device, batch_size=batch_size, progress=progress,
        )  # fmt: skip
        timings["embed_pool_s"] = time.perf_counter() - t
        t = time.perf_counter()
        picked, scores, vectors, removed, pick_timings = select_from_shards(
            ray, shards, lambda rows: _records_at(pool, rows), kshot_vectors, excluded, budget,
            mode, dedup_threshold,
        )  # fmt: skip
        timings["pool_pass_s"] = time.perf_counter() - t - sum(pick_timings.values())
    timings["refill_s"] = pick_timings["candidates_s"]
    timings["dedup_s"] = pick_timings["dedup_s"]
    selected = [r.model_copy(update={"score": round(float(s), 6)}) for r, s in zip(picked, scores)]
    summary: dict[str, Any] = {
        "mode": mode,
        "encoder": embedder.name,
        "shortlist_encoder": None,
        "shortlist_size": None,
        "budget": budget,
        "kshot_size": len(kshot),
        "pool_size": len(texts),
        "excluded_kshot_duplicates": len(excluded),
        "selected": len(selected),
        "dedup_threshold": dedup_threshold,
        "removed_duplicates": removed,
        "selected_per_source": dict(Counter(r.source or "unknown" for r in selected).most_common()),
        "pool_per_source": dict(sources.most_common()),
        "score": _score_stats(scores),
        "vendi_score": _vendi(vectors),
        "cache": {"dir": str(directory), "hits": counts["reused"], "misses": counts["embedded"]},
    }
    timings["total_s"] = time.perf_counter() - began
    summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    return SelectionResult(selected, scores.astype(np.float32), vectors.astype(np.float32), summary)


def select_from_shards(
    ray,
    shards,
    records_at,
    kshot_vectors: np.ndarray,
    excluded: Sequence[int],
    budget: int,
    mode: str = "centroid",
    dedup_threshold: float | None = 0.9,
):
    """Score the shards on actors, rank globally and deduplicate globally, as
    `retrieve._take_budget` does: (records, scores, vectors, removed, timings)."""
    from taskexpert.scaleout.retrieve import candidate_blocks, sharded_ranking
    from taskexpert.selection.retrieve import _take_budget

    actors, eligible = sharded_ranking(ray, shards, kshot_vectors, mode, np.asarray(excluded))
    try:
        if budget > eligible:
            raise InputError(f"budget {budget} exceeds the pool size {eligible}", field="budget")
        blocks = candidate_blocks(ray, actors, shards, records_at, 2 * budget, eligible)
        return _take_budget(blocks, budget, dedup_threshold)
    finally:
        for actor in actors:
            ray.kill(actor)
