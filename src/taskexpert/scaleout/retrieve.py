"""Sharded K-shot retrieval and global dedup; the selection equals `selection.retrieve`'s.

Each actor scores its shard against the K-shot index (built from the same vectors, by the same
`kshot_index`), chunk by chunk on the one-process chunk grid (shards start at multiples of the
chunk), and keeps the scores. The driver merges the shards' best `m` into the global ranking
(score descending, pool position ascending: `retrieve._rank`), fetches the candidates' vectors
and walks them through one `NearDuplicateFilter` with `retrieve._take_budget`: dedup is global,
with the one-process rule (the better-ranked survives), refilling block after block.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from taskexpert.errors import TaskexpertError
from taskexpert.scaleout.shards import Shard

CHUNK = 8192  # selection.retrieve.select_data's default chunk_size


class RetrieveWorker:
    """One Ray actor: a shard's vectors (memory-mapped) and their scores."""

    def __init__(self, shard: Shard) -> None:
        from threadpoolctl import threadpool_limits

        # one BLAS/OpenMP thread per actor, as one process pins itself (selection.kcenter):
        # the passes are memory-bound and two threads per core stall each other
        self._threads = threadpool_limits(limits=1)
        self.shard, self.matrix = shard, shard.open()
        self.scores = np.zeros(0, np.float32)

    def score(self, kshot_vectors: np.ndarray, mode: str, excluded: Sequence[int]) -> int:
        from taskexpert.embed import l2_normalize
        from taskexpert.selection.retrieve import kshot_index, score_against

        index = kshot_index(kshot_vectors, mode)
        parts = []
        for lo in range(0, len(self.matrix), CHUNK):
            vectors = l2_normalize(self.matrix[lo : lo + CHUNK])
            parts.append(score_against(index, vectors))
        self.scores = np.concatenate(parts) if parts else self.scores
        local = np.asarray(excluded, np.int64) - self.shard.start
        self.scores[local] = -np.inf
        return len(self.scores)

    def top(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        from taskexpert.selection.retrieve import _rank

        order = _rank(self.scores, np.arange(len(self.scores)))[:m]
        return self.scores[order], order + self.shard.start

    def vectors(self, rows: Sequence[int]) -> np.ndarray:
        from taskexpert.embed import l2_normalize

        local = np.asarray(rows, np.int64) - self.shard.start
        return l2_normalize(self.matrix[local])


def _get(ray, ref):
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        raise TaskexpertError(f"a Ray retrieval actor failed; nothing was written: {exc}") from None


def sharded_ranking(
    ray,
    shards: list[Shard],
    kshot_vectors: np.ndarray,
    mode: str,
    excluded: np.ndarray,
) -> tuple[list, int]:
    """Actors with their shard scored (K-shot duplicates at -inf) and the eligible count."""
    remote = ray.remote(num_cpus=1, max_restarts=0)(RetrieveWorker)
    actors = [remote.remote(s) for s in shards]
    excluded = np.asarray(excluded, np.int64)
    refs = [
        a.score.remote(kshot_vectors, mode, excluded[(excluded >= s.start) & (excluded < s.stop)])
        for a, s in zip(actors, shards)
    ]
    total = sum(_get(ray, r) for r in refs)
    return actors, total - len(excluded)


def candidate_blocks(
    ray,
    actors: list,
    shards: list[Shard],
    records_at,
    capacity: int,
    eligible: int,
) -> Iterator[tuple[list, np.ndarray, np.ndarray]]:
    """(records, vectors, scores) in global rank order, `capacity` at a time."""
    from taskexpert.selection.retrieve import _rank

    starts = np.array([s.start for s in shards])
    for begin in range(0, eligible, capacity):
        m = min(begin + capacity, eligible)
        tops = [_get(ray, a.top.remote(m)) for a in actors]
        scores = np.concatenate([t[0] for t in tops])
        rows = np.concatenate([t[1] for t in tops])
        order = _rank(scores, rows)[begin:m]
        scores, rows = scores[order], rows[order]
        vectors = np.empty((len(rows), 0), np.float32)
        owners = np.searchsorted(starts, rows, side="right") - 1
        parts = {
            int(k): _get(ray, actors[k].vectors.remote(rows[owners == k]))
            for k in np.unique(owners)
        }
        if parts:
            vectors = np.empty((len(rows), next(iter(parts.values())).shape[1]), np.float32)
            for k, block in parts.items():
                vectors[owners == k] = block
        yield records_at(rows), vectors, scores
