"""K-center greedy, DiverseEvol's sampler: repeatedly take the point farthest from all chosen.

The matrix is only ever streamed, chunk by chunk (it may be a memory-mapped 10^6 x 4096 file):
a running minimum of each point's distance to the chosen set (one float32 per point) makes every
pick one streaming pass, O(N*d) time and O(N) extra memory, never an N x N matrix. Distances use
the squared-norm trick with precomputed norms; anything the trick cannot resolve from zero
(duplicates, near-duplicates, rounding below zero) is recomputed exactly from the difference, so
exact duplicates tie at 0 and ties go to the lowest index, as in the brute-force definition.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from taskexpert.errors import InputError
from taskexpert.progress import progress as progress_bar
from taskexpert.runtime import pinned_threads

METRICS = ("euclidean", "cosine")
STORAGES = (None, "float32", "float16")
# Distances below this share of (|x|^2 + |c|^2) (cosine: below this 1 - cos) are within reach of
# float32 cancellation in the norm trick, so they are recomputed exactly from x - c.
NEAR_ZERO = 1e-3
CENTRE_BLOCK = 128  # initial centres are folded in with one GEMM per block of this many
# Running minima within this share of the maximum may be in the wrong order after float32
# rounding (gaps of 4e-8 occur by pick 214 of 1,000 at N=20,000): re-rank them in float64.
TIE_SLACK = 1e-5
MAX_RERANK = 64  # beyond this many near-ties (mass duplicates), keep the float32 order
CHOSEN = -1.0  # running-minimum sentinel: below every real distance, so argmax skips chosen points


def default_chunk_rows(dim: int) -> int:
    """Rows per chunk: about 4 MiB of float32, so widened half-precision chunks stay in cache."""
    return max(64, (1 << 20) // max(dim, 1))


class _Stream:
    """The stored matrix read as float32 chunks (float16 is widened into one reused buffer)."""

    def __init__(self, matrix: np.ndarray, chunk_rows: int) -> None:
        self.matrix, self.chunk_rows = matrix, chunk_rows
        self.n, self.dim = matrix.shape
        self.half = matrix.dtype == np.float16
        if self.half:  # torch views made once: per chunk only the widening copy remains
            self._buffer = np.empty((min(chunk_rows, self.n), self.dim), np.float32)
            self._source, self._target = _tensor(matrix), _tensor(self._buffer)

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        for lo in range(0, self.n, self.chunk_rows):
            yield lo, self.block(lo, min(lo + self.chunk_rows, self.n))

    def block(self, lo: int, hi: int) -> np.ndarray:
        if not self.half:
            return self.matrix[lo:hi]
        self._target[: hi - lo].copy_(self._source[lo:hi])
        return self._buffer[: hi - lo]

    def rows(self, index: np.ndarray | int) -> np.ndarray:
        return np.asarray(self.matrix[index], dtype=np.float32)


class _Centres(NamedTuple):
    raw: np.ndarray  # the centres' rows as stored (widened to float32)
    vectors: np.ndarray  # what each chunk is multiplied by (centred rows / unit rows)
    const: np.ndarray  # per-centre constant of the distance formula
    limit: np.ndarray  # per-centre part of the near-zero threshold


def centres_from(
    raw: np.ndarray, stat: np.ndarray, metric: str, mean: np.ndarray | None
) -> _Centres:
    """Centres from their float32 rows and per-row statistics (`_Distances.stat`); a sharded
    run builds them in the driver from rows the shards send, with this same arithmetic."""
    if metric == "euclidean":
        shifted = raw - mean  # c' = c - m; x.c' needs no centred copy of the chunk
        const = stat + 2.0 * (shifted @ mean)
        return _Centres(raw, shifted, const.astype(np.float32), NEAR_ZERO * stat)
    unit = raw * stat[:, None]
    zeros = np.zeros(len(raw), np.float32)
    return _Centres(raw, unit, zeros, zeros + NEAR_ZERO)


class _Distances:
    """Per-point statistics (one float32 each) and the exact distance of every point to centres."""

    def __init__(
        self, stream: _Stream, metric: str, mean: np.ndarray | None = None, offset: int = 0
    ) -> None:
        """`mean`: the centre of the whole matrix when `stream` is one shard of it (scaleout);
        `offset`: the shard's first global row, for error messages."""
        self.stream, self.metric = stream, metric
        if metric == "euclidean":
            # Centring by the mean costs one pass and keeps the norm trick accurate for embeddings
            # sharing a large common offset (mean-pooled LLM states do); distances are unchanged.
            self.mean = centre_of(stream) if mean is None else mean
            self.stat = np.empty(stream.n, np.float32)  # |x - mean|^2
            for lo, block in stream.chunks():
                centred = block - self.mean
                np.einsum("ij,ij->i", centred, centred, out=self.stat[lo : lo + len(block)])
        else:
            self.stat = np.empty(stream.n, np.float32)  # |x|^2 here, 1 / |x| below
            for lo, block in stream.chunks():
                np.einsum("ij,ij->i", block, block, out=self.stat[lo : lo + len(block)])
        bad = ~np.isfinite(self.stat)
        if bad.any():
            raise InputError(
                f"row {offset + int(np.argmax(bad))} is not finite (NaN, inf or overflow)",
                field="embeddings",
            )
        if metric == "euclidean":
            self.threshold = NEAR_ZERO * self.stat  # the row's part of the near-zero limit
        else:  # a zero row has no direction: 1 / |x| = 0 puts it at distance 1
            np.sqrt(self.stat, out=self.stat)
            with np.errstate(divide="ignore", over="ignore"):
                np.divide(1.0, self.stat, out=self.stat, where=self.stat > 0)
            self.stat[~np.isfinite(self.stat)] = 0.0

    def prepare(self, index: np.ndarray) -> _Centres:
        """Centres ready for `to_centres`; for euclidean, d2 = |x'|^2 + |c'|^2 - 2 x.c' + 2 m.c'."""
        mean = self.mean if self.metric == "euclidean" else None
        return centres_from(self.stream.rows(index), self.stat[index], self.metric, mean)

    def to_centres(self, lo: int, block: np.ndarray, centres: _Centres) -> np.ndarray:
        """Distances from a chunk starting at row `lo`, exact near zero: a vector for one centre
        (1-D keeps every step a flat, vectorised loop), rows x centres for several."""
        hi = lo + len(block)
        single = len(centres.vectors) == 1
        const, limit = (centres.const[0], centres.limit[0]) if single else centres[2:]
        stat = self.stat[lo:hi] if single else self.stat[lo:hi, None]
        dist = block @ (centres.vectors[0] if single else centres.vectors.T)
        if self.metric == "euclidean":
            dist *= -2.0
            dist += const
            dist += stat
            threshold = self.threshold[lo:hi] if single else self.threshold[lo:hi, None]
            close = dist <= threshold + limit
        else:
            dist *= stat
            np.subtract(1.0, dist, out=dist)
            close = dist <= limit
        if close.any():  # duplicates, near-duplicates and negative round-off: rare, so cheap
            hits = np.nonzero(close)
            cols = np.zeros(len(hits[0]), np.int64) if single else hits[1]
            dist[hits] = self._exact(lo + hits[0], block[hits[0]], centres, cols)
        return dist

    def _exact(
        self, index: np.ndarray, points: np.ndarray, centres: _Centres, cols: np.ndarray
    ) -> np.ndarray:
        if self.metric == "euclidean":
            diff = points - centres.raw[cols]
            return np.einsum("ij,ij->i", diff, diff)
        diff = points * self.stat[index][:, None] - centres.vectors[cols]
        return 0.5 * np.einsum("ij,ij->i", diff, diff)  # 1 - cos for unit vectors, 0 for duplicates


def kcenter_greedy(
    embeddings: np.ndarray,
    k: int,
    initial: Sequence[int] | np.ndarray | None = None,
    metric: str = "euclidean",
    seed: int = 0,
    chunk_size: int | None = None,
    storage: str | None = None,
    progress: bool = True,
    threads: int | None = 1,
    exclude: Sequence[int] | np.ndarray | None = None,
) -> list[int]:
    """Pick `k` new rows by K-center greedy and return them in pick order (`initial` excluded).

    `exclude` rows (e.g. from `outliers.far_outliers`) are never picked, so no centre lands on
    them; they do not count as chosen either.

    Each pick is the unchosen row farthest from its nearest chosen row (euclidean, or cosine
    distance 1 - cos), the lowest index on ties; `initial` rows count as chosen and are never
    picked. Without `initial` the first pick is drawn uniformly by `np.random.default_rng(seed)`.
    `embeddings` is an (N, d) float32 or float16 array or memmap, streamed `chunk_size` rows at a
    time; `storage="float16"` streams a float16 copy (half the bytes per pass, centred first for
    euclidean), `"float32"` a float32 one; arithmetic is float32 either way. `threads` caps
    BLAS/torch threads while streaming (None: their default): a pass is memory-bound, one thread
    gets most of the bandwidth and never stalls on a busy core (two did, up to 80x, here).
    """
    matrix = _check_matrix(embeddings)
    n, dim = matrix.shape
    chosen = _check_initial(initial, n)
    banned = (
        None if exclude is None else np.setdiff1d(_check_initial(exclude, n, "exclude"), chosen)
    )
    if metric not in METRICS:
        raise InputError(
            f"unknown metric {metric!r}; use one of {', '.join(METRICS)}", field="metric"
        )
    if storage not in STORAGES:
        raise InputError(f"unknown storage {storage!r}; use float32 or float16", field="storage")
    _check_k(k, n, chosen, banned)
    rows = default_chunk_rows(dim) if chunk_size is None else int(chunk_size)
    if rows < 1:
        raise InputError(f"chunk_size must be positive, got {chunk_size}", field="chunk_size")
    if k == 0:
        return []
    half = np.float16 in (matrix.dtype, {"float16": np.float16}.get(storage))
    with pinned_threads(threads, import_torch=half):
        return _greedy(
            _stored(matrix, storage, metric, rows), k, chosen, metric, seed, rows, progress, banned
        )


def _greedy(
    matrix: np.ndarray,
    k: int,
    chosen: np.ndarray,
    metric: str,
    seed: int,
    rows: int,
    progress: bool,
    banned: np.ndarray | None = None,
) -> list[int]:
    n = len(matrix)
    stream = _Stream(matrix, rows)
    distances = _Distances(stream, metric)
    nearest = np.full(n, np.inf, np.float32)  # the running minimum: distance to the chosen set
    for start in range(0, len(chosen), CENTRE_BLOCK):
        _absorb(stream, distances, nearest, chosen[start : start + CENTRE_BLOCK])
    nearest[chosen] = CHOSEN
    if banned is not None:
        nearest[banned] = CHOSEN  # below every distance: argmax never reaches them
    picks: list[int] = []
    centres = list(chosen)
    if len(chosen):
        pick = _farthest(nearest, stream, metric, centres)
    elif banned is None or len(banned) == 0:
        pick = int(np.random.default_rng(seed).integers(n))
    else:
        pick = int(np.random.default_rng(seed).choice(np.setdiff1d(np.arange(n), banned)))
    with progress_bar(total=k, desc="k-center", unit="pick", enabled=progress) as bar:
        while True:
            picks.append(pick)
            centres.append(pick)
            nearest[pick] = CHOSEN
            bar.update()
            if len(picks) == k:
                return picks
            _absorb(stream, distances, nearest, np.array([pick]))
            pick = _farthest(nearest, stream, metric, centres)


def _farthest(nearest: np.ndarray, stream: _Stream, metric: str, centres: list[int]) -> int:
    """argmax of the running minimum, lowest index on ties; rows within float32 reach of the
    maximum are re-ranked by their exact (float64) distance to the whole chosen set."""
    best = int(np.argmax(nearest))  # argmax returns the first maximum: lowest index on ties
    top = float(nearest[best])
    if top <= 0.0:  # only exact duplicates of chosen rows are left
        return best
    close = np.flatnonzero(nearest >= top * (1.0 - TIE_SLACK))
    if len(close) == 1:
        return best
    if len(close) > MAX_RERANK:
        close = np.sort(close[np.argsort(-nearest[close], kind="stable")[:MAX_RERANK]])
    exact = exact_nearest(stream.matrix, close, np.asarray(centres), metric)
    return int(close[np.argmax(exact)])


def exact_nearest(
    matrix: np.ndarray, rows: np.ndarray, centres: np.ndarray, metric: str = "euclidean"
) -> np.ndarray:
    """Float64 distance of each of `rows` to its nearest of `centres`, from exact differences
    (squared euclidean, or 1 - cos); the definition the streamed float32 minima approximate."""
    points = _float64_rows(matrix, rows, metric)
    nearest = np.full(len(points), np.inf)
    for lo in range(0, len(centres), CENTRE_BLOCK * 8):
        block = _float64_rows(matrix, centres[lo : lo + CENTRE_BLOCK * 8], metric)
        for i, point in enumerate(points):
            dist = ((block - point) ** 2).sum(axis=1)
            if metric == "cosine":
                dist *= 0.5
                dist[~block.any(axis=1) | (not point.any())] = 1.0  # zero rows: distance 1
            nearest[i] = min(nearest[i], dist.min())
    return nearest


def _float64_rows(matrix: np.ndarray, index: np.ndarray, metric: str) -> np.ndarray:
    rows = np.asarray(matrix[index], dtype=np.float64)
    if metric == "cosine":
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        rows = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
    return rows


def _absorb(stream: _Stream, distances: _Distances, nearest: np.ndarray, index: np.ndarray) -> None:
    """One streaming pass: lower each row's running minimum by its distance to the new centres."""
    absorb_centres(stream, distances, nearest, distances.prepare(index))


def absorb_centres(
    stream: _Stream, distances: _Distances, nearest: np.ndarray, centres: _Centres
) -> None:
    """`_absorb` with the centres already prepared (a shard gets them from the driver)."""
    for lo, block in stream.chunks():
        dist = distances.to_centres(lo, block, centres)
        part = nearest[lo : lo + len(block)]
        np.minimum(part, dist if dist.ndim == 1 else dist.min(axis=1), out=part)


def _check_matrix(embeddings: np.ndarray) -> np.ndarray:
    if not isinstance(embeddings, np.ndarray):
        raise InputError(
            f"embeddings must be a numpy array or memmap, got {type(embeddings).__name__}",
            field="embeddings",
        )
    if embeddings.ndim != 2 or 0 in embeddings.shape:
        raise InputError(
            f"embeddings must be a non-empty 2-D (N, d) array, got shape {embeddings.shape}",
            field="embeddings",
        )
    if embeddings.dtype not in (np.float32, np.float16):
        raise InputError(
            f"embeddings must be float32 or float16, got {embeddings.dtype}", field="embeddings"
        )
    return embeddings


def _check_k(k: object, n: int, chosen: np.ndarray, banned: np.ndarray | None) -> None:
    """k must be a whole number no larger than the rows neither initial nor excluded."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise InputError(f"k must be a non-negative integer, got {k!r}", field="k")
    left = n - len(chosen) - (0 if banned is None else len(banned))
    if k > left:
        raise InputError(
            f"k={k} exceeds the {left} rows left ({n} rows, {len(chosen)} initial, "
            f"{0 if banned is None else len(banned)} excluded)",
            field="k",
        )


def _check_initial(
    initial: Sequence[int] | np.ndarray | None, n: int, field: str = "initial"
) -> np.ndarray:
    if initial is None or len(initial) == 0:
        return np.empty(0, np.int64)
    index = np.asarray(initial)
    if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
        raise InputError(f"{field} must be a flat list of integer row indices", field=field)
    index = index.astype(np.int64)
    outside = index[(index < 0) | (index >= n)]
    if len(outside):
        raise InputError(f"index {outside[0]} is out of range for {n} rows", field=field)
    unique, counts = np.unique(index, return_counts=True)
    if (counts > 1).any():
        raise InputError(f"index {unique[counts > 1][0]} appears twice", field=field)
    return index


def _stored(matrix: np.ndarray, storage: str | None, metric: str, rows: int) -> np.ndarray:
    """The matrix to stream: as given, or a copy in the requested precision."""
    if storage == "float16" and matrix.dtype != np.float16:
        return half_precision_copy(matrix, metric, rows)
    if storage == "float32" and matrix.dtype != np.float32:
        copy = np.empty(matrix.shape, np.float32)
        for lo, block in _Stream(matrix, rows).chunks():
            copy[lo : lo + len(block)] = block
        return copy
    return matrix


def half_precision_copy(
    embeddings: np.ndarray,
    metric: str = "euclidean",
    chunk_size: int | None = None,
    threads: int | None = 1,
) -> np.ndarray:
    """A float16 copy for `kcenter_greedy` (half the bytes per pick), made chunk by chunk.

    For euclidean the rows are centred first (distances are unchanged), so float16's 11-bit
    mantissa resolves the spread between rows rather than an offset they share.
    """
    matrix = _check_matrix(embeddings)
    source = _Stream(matrix, chunk_size or default_chunk_rows(matrix.shape[1]))
    shift = centre_of(source) if metric == "euclidean" else np.zeros(source.dim, np.float32)
    copy = np.empty(matrix.shape, np.float16)
    with pinned_threads(threads):
        for lo, block in source.chunks():
            shifted = block - shift
            if np.abs(shifted).max() > np.finfo(np.float16).max:
                raise InputError(
                    "values exceed the float16 range (about 65504); use float32 storage",
                    field="embeddings",
                )
            _cast(shifted, copy[lo : lo + len(block)])
    return copy


def streaming_pass(
    embeddings: np.ndarray,
    vector: np.ndarray,
    chunk_size: int | None = None,
    threads: int | None = 1,
) -> np.ndarray:
    """One matrix-vector product streamed exactly as a pick streams the matrix: its time is
    the floor for one pick (benchmarks compare against it)."""
    matrix = _check_matrix(embeddings)
    stream = _Stream(matrix, chunk_size or default_chunk_rows(matrix.shape[1]))
    out = np.empty(stream.n, np.float32)
    vector = np.asarray(vector, np.float32)
    with pinned_threads(threads, import_torch=stream.half):
        for lo, block in stream.chunks():
            np.matmul(block, vector, out=out[lo : lo + len(block)])
    return out


def centre_of(stream: _Stream) -> np.ndarray:
    """The column mean rounded to 8 significant bits: close enough to remove a shared offset,
    coarse enough that subtracting it is exact for integer or short-mantissa data (real ties)."""
    return rounded_mean(chunk_sums(stream), stream.n)


def chunk_sums(stream: _Stream) -> list[np.ndarray]:
    """Float64 column sums of each chunk, in order (shards send theirs to the driver)."""
    return [block.sum(axis=0, dtype=np.float64) for _, block in stream.chunks()]


def rounded_mean(sums: list[np.ndarray], n: int) -> np.ndarray:
    """`centre_of` from chunk sums added in row order: the same float64 total, so a sharded
    run (scaleout.kcenter) centres by the very vector one process does."""
    total = np.zeros(len(sums[0]), np.float64)
    for part in sums:
        total += part
    mantissa, exponent = np.frexp(total / n)
    return np.ldexp(np.round(mantissa * 256) / 256, exponent).astype(np.float32)


def _cast(source: np.ndarray, out: np.ndarray) -> None:
    """Copy with a dtype change through torch (vectorised, unlike numpy's float16 casts)."""
    _tensor(out).copy_(_tensor(np.ascontiguousarray(source)))


def _tensor(array: np.ndarray):
    """A torch view of `array` (no copy); read-only memmaps are only ever read through it."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)
