"""K-shot guided retrieval from an open pool (docs/design.md Stage 2, paper A).

Pool and K-shot texts are embedded and L2-normalised, each pool item is scored by cosine to the
normalised K-shot centroid (`mode="centroid"`) or by its best cosine to any K-shot item
(`mode="max"`), the best `budget` are taken in rank order (ties: earlier pool position first),
and near-duplicates (cosine > threshold) are dropped in favour of the better-ranked item, refilling
from the ranking until the budget is met.

Memory stays O(N): the pool streams through in chunks; each chunk is searched against a FAISS
inner-product index of the K-shot side (one centroid or K vectors), so only one score per pool
item is kept, plus records and vectors of the current best candidates. Pool items whose text is
identical to a K-shot item are excluded (they add nothing to K-shot + selected).

Two-stage mode: a fast `shortlist_embedder` (the static encoder) ranks the whole pool, and the
main `embedder` re-scores only the top `shortlist_factor * budget` items.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from taskexpert.embed import (
    Embedder,
    EmbeddingCache,
    SentenceEncoder,
    embed_records,
    embed_texts,
    l2_normalize,
)
from taskexpert.errors import InputError
from taskexpert.progress import progress as progress_bar
from taskexpert.records import Record
from taskexpert.selection.dedup import DEFAULT_THRESHOLD, NearDuplicateFilter
from taskexpert.selection.vendi import vendi_score

MODES = ("centroid", "max")


@dataclass
class SelectionResult:
    """Selected records best first (each with a `score` field), their vectors and a summary."""

    records: list[Record]
    scores: np.ndarray
    embeddings: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)


def kshot_index(kshot_vectors: np.ndarray, mode: str):
    """FAISS inner-product index of what pool items are compared with: the centroid or all items."""
    import faiss

    if mode == "centroid":
        centroid = kshot_vectors.mean(axis=0, keepdims=True)
        queries = centroid / max(float(np.linalg.norm(centroid)), 1e-12)
    else:
        queries = kshot_vectors
    index = faiss.IndexFlatIP(kshot_vectors.shape[1])
    index.add(np.ascontiguousarray(queries, dtype=np.float32))
    return index


def score_against(index, vectors: np.ndarray) -> np.ndarray:
    """Best inner product of each row with the index (cosine, for normalised vectors)."""
    if len(vectors) == 0:
        return np.zeros(0, dtype=np.float32)
    best, _ = index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
    return best[:, 0]


def _rank(scores: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Order of items by score descending, ties by pool position ascending."""
    return np.lexsort((positions, -scores))


class _TopCandidates:
    """The best `capacity` pool items seen so far (score, position, record, vector)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.scores = np.zeros(0, dtype=np.float32)
        self.positions = np.zeros(0, dtype=np.int64)
        self.records: list[Record] = []
        self.vectors: np.ndarray | None = None

    def offer(self, scores, positions, records, vectors) -> None:
        if len(self.scores) == self.capacity:  # full: only items beating the worst kept can enter
            better = np.flatnonzero(scores > self.scores[-1])
            scores, positions, vectors = scores[better], positions[better], vectors[better]
            records = [records[i] for i in better]
        all_scores = np.concatenate([self.scores, scores])
        all_pos = np.concatenate([self.positions, positions])
        all_vecs = vectors if self.vectors is None else np.concatenate([self.vectors, vectors])
        all_recs = self.records + list(records)
        keep = _rank(all_scores, all_pos)[: self.capacity]
        self.scores, self.positions = all_scores[keep], all_pos[keep]
        self.vectors = all_vecs[keep]
        self.records = [all_recs[i] for i in keep]


def _records_at(pool: Any, positions: np.ndarray) -> list[Record]:
    """Records at the given pool positions (a sequence is indexed, a re-iterable re-read once)."""
    if isinstance(pool, Sequence):
        return [pool[int(i)] for i in positions]
    wanted = {int(p): k for k, p in enumerate(positions)}
    found: list[Record | None] = [None] * len(positions)
    for pos, record in enumerate(pool):
        if pos in wanted:
            found[wanted[pos]] = record
    return found  # type: ignore[return-value]


def _batched(items: Iterator[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _check_args(
    kshot: Sequence[Record], budget: int, mode: str, threshold: float | None, factor: int
) -> None:
    if not kshot:
        raise InputError("the K-shot set is empty", field="kshot")
    if budget < 1:
        raise InputError(f"budget must be at least 1, got {budget}", field="budget")
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}", field="mode")
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise InputError(f"dedup threshold must be in (0, 1], got {threshold}", field="dedup")
    if factor < 1:
        raise InputError(f"shortlist factor must be at least 1, got {factor}", field="shortlist")


@dataclass
class _PoolPass:
    """What one streaming pass leaves: a score per pool item and the best `capacity` candidates."""

    scores: np.ndarray
    top: _TopCandidates
    excluded: int
    sources: Counter
    records: list[Record]  # every record, only when the pool is a one-shot iterator


def _score_pool(
    pool: Iterable[Record],
    embedder: Embedder,
    index,
    kshot_texts: set[str],
    capacity: int,
    cache: EmbeddingCache | None,
    chunk_size: int,
    batch_size: int | None,
    progress: bool,
) -> _PoolPass:
    """Embed and score the pool chunk by chunk; K-shot texts found in the pool score -inf."""
    iterator = iter(pool)
    one_shot = iterator is pool
    result = _PoolPass(np.zeros(0, np.float32), _TopCandidates(capacity), 0, Counter(), [])
    parts: list[np.ndarray] = []
    total = len(pool) if isinstance(pool, Sized) else None
    bar = progress_bar(total=total, desc=f"pool ({embedder.name})", unit="rec", enabled=progress)
    n_pool = 0
    for chunk in _batched(iterator, chunk_size):
        texts = [r.text for r in chunk]
        vectors = l2_normalize(embed_texts(texts, embedder, cache, batch_size, progress))
        scores = score_against(index, vectors)
        overlap = np.fromiter((t in kshot_texts for t in texts), dtype=bool, count=len(texts))
        scores[overlap] = -np.inf
        result.excluded += int(overlap.sum())
        positions = np.arange(n_pool, n_pool + len(chunk), dtype=np.int64)
        result.top.offer(scores, positions, chunk, vectors)
        result.sources.update(r.source or "unknown" for r in chunk)
        parts.append(scores)
        if one_shot:
            result.records.extend(chunk)
        n_pool += len(chunk)
        bar.update(len(chunk))
    bar.close()
    result.scores = np.concatenate(parts) if parts else result.scores
    return result


def _candidate_blocks(
    scanned: _PoolPass,
    pool: Any,
    first: Embedder,
    rerank: tuple[Embedder, Any] | None,
    cache: EmbeddingCache | None,
    batch_size: int | None,
    progress: bool,
) -> Iterator[tuple[list[Record], np.ndarray, np.ndarray]]:
    """(records, vectors, scores) in final rank order, one block of `capacity` after another.

    The first block is the candidates kept by the pass; later ones (needed only when
    deduplication exhausts it) are fetched by position and embedded again (cache hits).
    With `rerank` = (embedder, K-shot index), each block is re-scored and re-sorted.
    """
    capacity, scores_all = scanned.top.capacity, scanned.scores
    eligible = len(scores_all) - scanned.excluded
    order = _rank(scores_all, np.arange(len(scores_all)))[:eligible]
    for start in range(0, eligible, capacity):
        positions = order[start : start + capacity]
        n = len(positions)
        if start == 0:
            top = scanned.top
            records, vectors, scores = top.records[:n], top.vectors[:n], top.scores[:n]
        else:
            records = _records_at(pool, positions)
            scores = scores_all[positions]
            if rerank is None:
                vectors = l2_normalize(embed_records(records, first, cache, batch_size, False))
        if rerank is not None:
            embedder, index = rerank
            vectors = l2_normalize(embed_records(records, embedder, cache, batch_size, progress))
            scores = score_against(index, vectors)
            resort = _rank(scores, positions)
            scores, vectors = scores[resort], vectors[resort]
            records = [records[i] for i in resort]
        yield records, vectors, scores


def _take_budget(
    blocks: Iterator[tuple[list[Record], np.ndarray, np.ndarray]],
    budget: int,
    threshold: float | None,
) -> tuple[list[Record], np.ndarray, np.ndarray, int, dict[str, float]]:
    """Walk the ranking, dropping near-duplicates, until `budget` records are kept."""
    records: list[Record] = []
    scores: list[np.ndarray] = []
    vectors: list[np.ndarray] = []
    dedup: NearDuplicateFilter | None = None
    timings = {"candidates_s": 0.0, "dedup_s": 0.0}
    t = time.perf_counter()
    for block_records, block_vectors, block_scores in blocks:
        timings["candidates_s"] += time.perf_counter() - t
        t = time.perf_counter()
        if threshold is not None:
            dedup = dedup or NearDuplicateFilter(block_vectors.shape[1], threshold)
            keep = dedup.add(block_vectors, limit=budget)
        else:
            keep = np.arange(min(len(block_records), budget - len(records)))
        records.extend(block_records[i] for i in keep)
        scores.append(block_scores[keep])
        vectors.append(block_vectors[keep])
        timings["dedup_s"] += time.perf_counter() - t
        if len(records) >= budget:
            break
        t = time.perf_counter()
    removed = dedup.removed if dedup is not None else 0
    return records, np.concatenate(scores), np.concatenate(vectors), removed, timings


def select_data(
    pool: Iterable[Record] | list[Record],
    kshot: list[Record],
    budget: int,
    *,
    mode: str = "centroid",
    dedup_threshold: float | None = DEFAULT_THRESHOLD,
    embedder: Embedder | None = None,
    shortlist_embedder: Embedder | None = None,
    shortlist_factor: int = 10,
    cache: EmbeddingCache | None = None,
    chunk_size: int = 8192,
    batch_size: int | None = None,
    progress: bool = True,
) -> SelectionResult:
    """Select `budget` pool records closest to the K-shot set, near-duplicates removed.

    `pool` may be a list, a re-iterable (read again only if deduplication exhausts the
    candidates) or a one-shot iterator (then kept in memory for that case). `dedup_threshold=None`
    turns deduplication off. With `shortlist_embedder`, it ranks the pool and `embedder` re-scores
    the top `shortlist_factor * budget` (two-stage mode).
    """
    t_start = time.perf_counter()
    _check_args(kshot, budget, mode, dedup_threshold, shortlist_factor)
    if isinstance(pool, Sized) and budget > len(pool):
        raise InputError(f"budget {budget} exceeds the pool size {len(pool)}", field="budget")
    embedder = embedder if embedder is not None else SentenceEncoder()
    two_stage = shortlist_embedder is not None
    first = shortlist_embedder if two_stage else embedder
    capacity = shortlist_factor * budget if two_stage else 2 * budget

    t = time.perf_counter()
    index = kshot_index(
        l2_normalize(embed_records(kshot, first, cache, batch_size, progress)), mode
    )
    rerank = None
    if two_stage:
        vectors = l2_normalize(embed_records(kshot, embedder, cache, batch_size, progress))
        rerank = (embedder, kshot_index(vectors, mode))
    timings = {"embed_kshot_s": time.perf_counter() - t}

    t = time.perf_counter()
    kshot_texts = {r.text for r in kshot}
    args = (cache, chunk_size, batch_size, progress)
    scanned = _score_pool(pool, first, index, kshot_texts, capacity, *args)
    timings["pool_pass_s"] = time.perf_counter() - t
    eligible = len(scanned.scores) - scanned.excluded
    if budget > eligible:
        detail = (
            f" after excluding {scanned.excluded} K-shot duplicates" if scanned.excluded else ""
        )
        raise InputError(
            f"budget {budget} exceeds the pool size {eligible}{detail}", field="budget"
        )

    source = scanned.records if scanned.records else pool
    blocks = _candidate_blocks(scanned, source, first, rerank, cache, batch_size, progress)
    picked, scores, vectors, removed, pick_timings = _take_budget(blocks, budget, dedup_threshold)
    timings[("rerank_s" if two_stage else "refill_s")] = pick_timings["candidates_s"]
    timings["dedup_s"] = pick_timings["dedup_s"]

    selected = [r.model_copy(update={"score": round(float(s), 6)}) for r, s in zip(picked, scores)]
    summary: dict[str, Any] = {
        "mode": mode,
        "encoder": embedder.name,
        "shortlist_encoder": shortlist_embedder.name if two_stage else None,
        "shortlist_size": min(capacity, eligible) if two_stage else None,
        "budget": budget,
        "kshot_size": len(kshot),
        "pool_size": len(scanned.scores),
        "excluded_kshot_duplicates": scanned.excluded,
        "selected": len(selected),
        "dedup_threshold": dedup_threshold,
        "removed_duplicates": removed,
        "selected_per_source": dict(Counter(r.source or "unknown" for r in selected).most_common()),
        "pool_per_source": dict(scanned.sources.most_common()),
        "score": _score_stats(scores),
        "vendi_score": _vendi(vectors),
    }
    if cache is not None:
        summary["cache"] = {"dir": str(cache.root), "hits": cache.hits, "misses": cache.misses}
    timings["total_s"] = time.perf_counter() - t_start
    summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    return SelectionResult(selected, scores.astype(np.float32), vectors.astype(np.float32), summary)


def _score_stats(scores: np.ndarray) -> dict[str, float]:
    if not len(scores):
        return {}
    return {
        "max": round(float(scores.max()), 4),
        "mean": round(float(scores.mean()), 4),
        "min": round(float(scores.min()), 4),
    }


def _vendi(vectors: np.ndarray) -> float | None:
    """Vendi score (DiverseEvol's diversity measure) of the selection."""
    nonzero = vectors[np.linalg.norm(vectors, axis=1) > 0]  # a static model can give all-zero rows
    return round(float(vendi_score(nonzero)), 4) if len(nonzero) else None
