"""K-center greedy against the brute-force definition, plus precision, memmap and bad input."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from taskexpert.errors import InputError
from taskexpert.selection import kcenter_greedy
from taskexpert.selection.kcenter import half_precision_copy, streaming_pass


def brute_force(x: np.ndarray, k: int, initial=(), metric="euclidean", seed=0) -> list[int]:
    """The definition, in float64 from exact differences: argmax over unchosen rows of the
    distance to the nearest chosen row, lowest index on ties."""
    x = x.astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # cosine: 2 (1 - cos), same order
    chosen = list(initial)
    picks = []
    for _ in range(k):
        if not chosen:
            pick = int(np.random.default_rng(seed).integers(len(x)))
        else:
            nearest = dist[:, chosen].min(axis=1)
            nearest[chosen] = -1.0
            pick = int(np.argmax(nearest))
        picks.append(pick)
        chosen.append(pick)
    return picks


def with_duplicates(n: int, dim: int, seed: int, dtype=np.float32) -> np.ndarray:
    """Gaussian rows with a large shared offset, a quarter of them exact copies of others."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)) + 3.0
    copies = rng.choice(n, size=n // 4, replace=False)
    x[copies] = x[rng.integers(0, n, size=len(copies))]
    return x.astype(dtype)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_to_the_last_pick(metric, seed):
    x = with_duplicates(150, 12, seed)
    initial = [3, 77] if seed == 2 else []
    k = len(x) - len(initial)
    got = kcenter_greedy(
        x, k, initial=initial, metric=metric, seed=seed, chunk_size=16, progress=False
    )
    assert got == brute_force(x, k, initial, metric, seed)
    assert sorted(got + initial) == list(range(len(x)))


def test_matches_a_float64_running_minimum_at_larger_n():
    x = with_duplicates(3000, 24, 11)
    x64 = x.astype(np.float64)
    nearest, chosen = np.full(len(x), np.inf), []
    for _ in range(400):  # the definition once more, O(N) per pick, exact differences
        pick = int(np.argmax(nearest)) if chosen else int(np.random.default_rng(0).integers(3000))
        chosen.append(pick)
        nearest = np.minimum(nearest, ((x64 - x64[pick]) ** 2).sum(axis=1))
        nearest[chosen] = -1.0
    assert kcenter_greedy(x, 400, progress=False) == chosen


def test_ties_on_an_integer_grid_go_to_the_lowest_index():
    # small integers: every float32 operation is exact, so ties are real ties
    x = np.random.default_rng(5).integers(0, 3, size=(120, 4)).astype(np.float32)
    got = kcenter_greedy(x, 120, seed=0, chunk_size=7, progress=False)
    assert got == brute_force(x, 120)


def test_near_ties_below_float32_resolution_follow_the_exact_distance():
    eps = 2.0**-20  # row 2 is farther from row 0 than row 1 by 2^-39 in squared distance
    x = np.array([[0, 0], [1, 1], [1 + eps, 1 - eps], [0.5, 0.5]], np.float32)
    assert kcenter_greedy(x, 1, initial=[0], progress=False) == [2] == brute_force(x, 1, [0])


def test_initial_rows_are_never_picked_and_many_initial_use_blocks():
    x = with_duplicates(400, 8, 4)
    initial = list(range(0, 400, 2))  # more than one GEMM block of centres
    got = kcenter_greedy(x, 50, initial=initial, chunk_size=33, progress=False)
    assert not set(got) & set(initial)
    assert got == brute_force(x, 50, initial)


def test_exact_duplicates_give_zero_not_nan():
    x = np.ones((10, 5), np.float32) * 1e3
    got = kcenter_greedy(x, 10, seed=3, progress=False)
    assert got[0] == int(np.random.default_rng(3).integers(10))
    assert got[1:] == [i for i in range(10) if i != got[0]]


def test_first_pick_follows_the_seed_and_chunking_does_not_matter():
    x = with_duplicates(90, 6, 7)
    picks = {
        tuple(kcenter_greedy(x, 20, seed=s, chunk_size=c, progress=False))
        for s in (11,)
        for c in (1, 8, 1000)
    }
    assert len(picks) == 1
    assert next(iter(picks))[0] == int(np.random.default_rng(11).integers(90))


def test_float16_input_and_float16_storage():
    x = with_duplicates(120, 10, 8)
    half = x.astype(np.float16)
    assert kcenter_greedy(half, 60, progress=False) == brute_force(half, 60)
    stored = kcenter_greedy(x, 60, storage="float16", progress=False)
    copy = half_precision_copy(x, chunk_size=50)
    assert stored == brute_force(copy, 60)
    assert kcenter_greedy(copy, 60, progress=False) == stored
    assert kcenter_greedy(half, 60, storage="float32", progress=False) == brute_force(half, 60)


def test_half_precision_copy_is_centred_and_keeps_distances():
    x = with_duplicates(50, 16, 9) + 100.0  # a large shared offset
    copy = half_precision_copy(x)
    assert copy.dtype == np.float16 and abs(float(copy.astype(np.float32).mean())) < 0.1
    exact = np.linalg.norm(x[1:] - x[0], axis=1)
    halved = np.linalg.norm(copy[1:].astype(np.float32) - copy[0].astype(np.float32), axis=1)
    assert np.allclose(halved, exact, rtol=2e-3, atol=2e-3)
    cosine = half_precision_copy(x, metric="cosine")  # cosine is not shift-invariant: no centring
    assert np.allclose(cosine.astype(np.float32), x, rtol=1e-3)


def test_streaming_pass_is_the_matrix_vector_product():
    x = with_duplicates(100, 12, 10)
    v = np.arange(12, dtype=np.float32)
    assert np.allclose(streaming_pass(x, v, chunk_size=7), x @ v, rtol=1e-5)
    half = x.astype(np.float16)
    assert np.allclose(streaming_pass(half, v), half.astype(np.float32) @ v, rtol=1e-5)


def test_float16_overflow_is_reported():
    x = np.zeros((4, 3), np.float32)
    x[1, 2] = 1e6
    with pytest.raises(InputError, match="float16 range"):
        kcenter_greedy(x, 2, storage="float16", metric="cosine", progress=False)


def test_memmap_input_streams_in_bounded_memory(tmp_path):
    n, dim = 20_000, 64
    path = tmp_path / "e.npy"
    matrix = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    matrix[:] = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
    matrix.flush()
    del matrix
    mapped = np.load(path, mmap_mode="r")
    kcenter_greedy(mapped[:10], 2, progress=False)  # imports happen outside the measurement
    tracemalloc.start()
    picks = kcenter_greedy(mapped, 5, chunk_size=1000, progress=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(set(picks)) == 5
    assert peak < 8 * n * 4  # a few float32 vectors of length N; the matrix is 64 x that
    assert picks == kcenter_greedy(np.array(mapped), 5, progress=False)
    np.save(tmp_path / "h.npy", mapped[:500].astype(np.float16))
    half = np.load(tmp_path / "h.npy", mmap_mode="r")
    assert kcenter_greedy(half, 20, progress=False) == brute_force(np.asarray(half), 20)


def test_zero_rows_under_cosine_sit_at_distance_one():
    x = np.array([[1, 0], [0, 0], [0.9, 0.1], [-1, 0]], np.float32)
    assert kcenter_greedy(x, 3, initial=[0], metric="cosine", progress=False) == [3, 1, 2]


@pytest.mark.parametrize(
    "embeddings, kwargs, message",
    [
        (np.zeros((5, 3), np.float64), {}, "float32 or float16"),
        (np.zeros(5, np.float32), {}, "2-D"),
        (np.zeros((0, 3), np.float32), {}, "2-D"),
        ([[0.0, 1.0]], {}, "numpy array"),
        (np.zeros((5, 3), np.float32), {"k": 5, "initial": [0]}, "exceeds"),
        (np.zeros((5, 3), np.float32), {"k": -1}, "non-negative"),
        (np.zeros((5, 3), np.float32), {"initial": [5]}, "out of range"),
        (np.zeros((5, 3), np.float32), {"initial": [-1]}, "out of range"),
        (np.zeros((5, 3), np.float32), {"initial": [1, 1]}, "twice"),
        (np.zeros((5, 3), np.float32), {"initial": [0.5]}, "integer"),
        (np.zeros((5, 3), np.float32), {"metric": "manhattan"}, "metric"),
        (np.zeros((5, 3), np.float32), {"storage": "int8"}, "storage"),
        (np.full((5, 3), np.nan, np.float32), {}, "not finite"),
        (np.array([[np.inf, 0]] + [[1, 0]] * 4, np.float32), {"metric": "cosine"}, "row 0 is not"),
        (np.array([[0, 0]] * 4 + [[1e30, 0]], np.float32), {}, "overflow"),
    ],
)
def test_bad_input_is_a_clear_error(embeddings, kwargs, message):
    kwargs = {"k": 2, "progress": False, **kwargs}
    with pytest.raises(InputError, match=message):
        kcenter_greedy(embeddings, **kwargs)


def test_k_zero_returns_nothing():
    assert kcenter_greedy(np.zeros((3, 2), np.float32), 0, initial=[1], progress=False) == []
