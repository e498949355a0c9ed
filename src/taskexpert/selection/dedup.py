"""Near-duplicate removal in rank order (docs/design.md Stage 2): keep an item unless it is too
close to one already kept, so of two near-duplicates the better-ranked (more similar) one survives.

Kept items live in an incremental FAISS inner-product index; candidates arrive in blocks, are
searched against it, then checked against each other inside the block (block x block). Memory is
O(kept + block^2), never N x N.
"""

from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLD = 0.9


class NearDuplicateFilter:
    """Streaming greedy filter over L2-normalised vectors: duplicate means cosine > threshold."""

    def __init__(self, dim: int, threshold: float = DEFAULT_THRESHOLD, block: int = 256) -> None:
        import faiss

        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"dedup threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.block = block
        self.index = faiss.IndexFlatIP(dim)
        self.kept = 0
        self.removed = 0

    def add(self, vectors: np.ndarray, limit: int | None = None) -> np.ndarray:
        """Offer `vectors` in order; returns the indices kept (added to the index).

        Stops once `limit` items are kept in total, so the rest of the input is left unexamined.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        kept: list[int] = []
        for start in range(0, len(vectors), self.block):
            if limit is not None and self.kept >= limit:
                break
            block = vectors[start : start + self.block]
            if self.index.ntotal:
                best, _ = self.index.search(block, 1)
                clash = best[:, 0] > self.threshold
            else:
                clash = np.zeros(len(block), dtype=bool)
            inner = block @ block.T
            accepted: list[int] = []
            for i in range(len(block)):
                if limit is not None and self.kept + len(accepted) >= limit:
                    break
                if clash[i] or (accepted and inner[i, accepted].max() > self.threshold):
                    self.removed += 1
                    continue
                accepted.append(i)
            if accepted:
                self.index.add(block[accepted])
                self.kept += len(accepted)
                kept.extend(start + i for i in accepted)
        return np.asarray(kept, dtype=np.int64)


def remove_near_duplicates(
    vectors: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    limit: int | None = None,
) -> np.ndarray:
    """Indices of the rows kept, in order, when rows (best first) are filtered greedily."""
    if len(vectors) == 0:
        return np.zeros(0, dtype=np.int64)
    return NearDuplicateFilter(vectors.shape[1], threshold).add(vectors, limit)
