from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from taskexpert.embed import l2_normalize
from taskexpert.selection.dedup import NearDuplicateFilter, remove_near_duplicates


def brute_force_greedy(vectors: np.ndarray, threshold: float, limit: int | None = None) -> list:
    """The definition: walk in order, keep an item unless its cosine to a kept one > threshold."""
    sims = vectors @ vectors.T
    kept: list[int] = []
    for i in range(len(vectors)):
        if limit is not None and len(kept) >= limit:
            break
        if not kept or sims[i, kept].max() <= threshold:
            kept.append(i)
    return kept


def planted(n: int = 300, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Random unit vectors with exact copies and noisy near-copies mixed in."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, dim))
    copies = rng.integers(0, n, size=n // 5)
    base[rng.integers(0, n, size=n // 5)] = base[copies]
    noisy = rng.integers(0, n, size=n // 5)
    base[rng.integers(0, n, size=n // 5)] = base[noisy] + 0.1 * rng.normal(size=(n // 5, dim))
    return l2_normalize(base)


@pytest.mark.parametrize("threshold", [0.9, 0.5, 0.2])
@pytest.mark.parametrize("block", [1, 7, 256])
def test_matches_brute_force(threshold, block):
    vectors = planted()
    kept = NearDuplicateFilter(vectors.shape[1], threshold, block=block).add(vectors)
    assert kept.tolist() == brute_force_greedy(vectors, threshold)


def test_exact_duplicates_removed_first_kept():
    rng = np.random.default_rng(1)
    unique = l2_normalize(rng.normal(size=(5, 8)))
    vectors = unique[[0, 1, 0, 2, 1, 3, 4, 4]]
    assert remove_near_duplicates(vectors).tolist() == [0, 1, 3, 5, 6]


def test_keeps_the_better_ranked_of_a_near_duplicate_pair():
    a = np.array([1.0, 0.0, 0.0])
    near_a = l2_normalize(np.array([[1.0, 0.2, 0.0]]))[0]  # cosine 0.98 to a
    b = np.array([0.0, 1.0, 0.0])
    assert remove_near_duplicates(np.stack([near_a, b, a]).astype(np.float32)).tolist() == [0, 1]


def test_limit_stops_early_with_the_same_prefix():
    vectors = planted(seed=3)
    full = brute_force_greedy(vectors, 0.5)
    filt = NearDuplicateFilter(vectors.shape[1], 0.5, block=16)
    assert filt.add(vectors, limit=40).tolist() == full[:40]
    assert filt.kept == 40


def test_incremental_calls_equal_one_call():
    vectors = planted(seed=4)
    filt = NearDuplicateFilter(vectors.shape[1], 0.5, block=32)
    parts = [filt.add(vectors[s : s + 50]) + s for s in range(0, len(vectors), 50)]
    assert np.concatenate(parts).tolist() == brute_force_greedy(vectors, 0.5)
    assert filt.removed == len(vectors) - filt.kept


def test_memory_is_not_quadratic():
    n, dim = 6000, 16
    vectors = l2_normalize(np.random.default_rng(5).normal(size=(n, dim)))
    tracemalloc.start()
    remove_near_duplicates(vectors, 0.9)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < n * n * 4 / 20  # an N x N float32 matrix would be 144 MB


def test_threshold_out_of_range():
    with pytest.raises(ValueError):
        NearDuplicateFilter(4, 1.5)
