"""K-center greedy over shards held by Ray actors; the picks equal `kcenter_greedy`'s exactly.

Each actor memory-maps one shard and keeps that shard's running min-distance vector and row
statistics. The driver keeps what one process keeps besides: the centres (rows and statistics,
from the shards that own them) and the log of operations applied so far. Per pick it sends the
new centre to every shard, each answers with its maximum, and the driver takes the global
argmax, ties by lowest global index. Where one process re-ranks near-ties in float64
(`selection.kcenter._farthest`), the shards send their near-tie rows and the driver re-ranks
them with the same `exact_nearest`. The arithmetic per row is the one process's: the mean
(euclidean) is built from the shards' chunk sums added in row order, shards start on the
one-process chunk grid when the driver cuts them, and the centres are built by `centres_from`.

An actor that dies is replaced once per shard: the fresh actor replays the operation log and
reaches the same state; a second death stops the run with an error (never a partial result).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from taskexpert.errors import InputError, TaskexpertError
from taskexpert.progress import progress as progress_bar
from taskexpert.scaleout.shards import Shard
from taskexpert.selection.kcenter import (
    CENTRE_BLOCK,
    CHOSEN,
    MAX_RERANK,
    METRICS,
    TIE_SLACK,
    _check_initial,
    _check_k,
    _Distances,
    _Stream,
    absorb_centres,
    centres_from,
    chunk_sums,
    default_chunk_rows,
    exact_nearest,
    rounded_mean,
)

# Operations in the log: ("mark", global rows) sets rows to CHOSEN; ("absorb", _Centres).
Op = tuple[str, object]


class ShardWorker:
    """One Ray actor: a shard, its row statistics and its running minimum."""

    def __init__(self, shard: Shard, metric: str, chunk_rows: int) -> None:
        from threadpoolctl import threadpool_limits

        # one BLAS/OpenMP thread per actor, as one process pins itself (selection.kcenter):
        # the passes are memory-bound and two threads per core stall each other
        self._threads = threadpool_limits(limits=1)
        self.start, self.metric = shard.start, metric
        matrix = shard.open()
        if matrix.dtype not in (np.float32, np.float16) or matrix.ndim != 2:
            raise InputError(f"shard rows {shard.start}.. are not a float (N, d) matrix")
        self.stream = _Stream(matrix, chunk_rows)
        self.distances: _Distances | None = None
        self.nearest: np.ndarray | None = None

    def sums(self) -> list[np.ndarray]:
        return chunk_sums(self.stream)

    def dim(self) -> int:
        return self.stream.dim

    def prepare(self, mean: np.ndarray | None) -> None:
        self.distances = _Distances(self.stream, self.metric, mean, offset=self.start)
        self.nearest = np.full(self.stream.n, np.inf, np.float32)

    def apply(self, ops: Sequence[Op]) -> tuple[float, int, np.ndarray, float]:
        """Apply the operations in order; the shard's maximum (lowest row on ties), its
        global row, the row itself and its statistic."""
        for kind, arg in ops:
            if kind == "mark":
                rows = np.asarray(arg, np.int64) - self.start
                self.nearest[rows[(rows >= 0) & (rows < self.stream.n)]] = CHOSEN
            else:
                absorb_centres(self.stream, self.distances, self.nearest, arg)
        best = int(np.argmax(self.nearest))
        return (
            float(self.nearest[best]),
            self.start + best,
            self.stream.rows(best),
            float(self.distances.stat[best]),
        )

    def close(self, threshold: float) -> tuple[int, np.ndarray, np.ndarray]:
        """Rows at or above `threshold`: their count and the best MAX_RERANK (global rows,
        ascending, and values), chosen as one process chooses them."""
        close = np.flatnonzero(self.nearest >= threshold)
        if len(close) > MAX_RERANK:
            close = np.sort(close[np.argsort(-self.nearest[close], kind="stable")[:MAX_RERANK]])
        count = int(np.count_nonzero(self.nearest >= threshold))
        return count, close + self.start, self.nearest[close]

    def rows(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Global rows' vectors (float32) and statistics."""
        local = np.asarray(rows, np.int64) - self.start
        return self.stream.rows(local), self.distances.stat[local].astype(np.float32)


class ShardedKCenter:
    """The driver: actors, the operation log and the centres so far."""

    def __init__(
        self,
        ray,
        shards: list[Shard],
        metric: str,
        chunk_rows: int,
        on_pick: Callable[[ShardedKCenter, int], None] | None = None,
    ) -> None:
        self.ray, self.shards, self.metric, self.chunk_rows = ray, shards, metric, chunk_rows
        self.remote = ray.remote(num_cpus=1, max_restarts=0)(ShardWorker)
        self.actors = [self._spawn(s) for s in shards]
        self.retried = [False] * len(shards)
        self.mean: np.ndarray | None = None
        self.log: list[Op] = []
        self.on_pick = on_pick
        self.starts = np.array([s.start for s in shards])

    def _spawn(self, shard: Shard):
        return self.remote.remote(shard, self.metric, self.chunk_rows)

    # -- calls that survive one actor death per shard
    def _get(self, k: int, method: str, *args):
        ray = self.ray
        try:
            return ray.get(getattr(self.actors[k], method).remote(*args))
        except ray.exceptions.RayActorError as exc:
            self._revive(k, exc)
            return ray.get(getattr(self.actors[k], method).remote(*args))
        except ray.exceptions.RayTaskError as exc:
            raise _unwrap(exc) from None

    def _all(self, method: str, *args) -> list:
        ray = self.ray
        refs = [getattr(a, method).remote(*args) for a in self.actors]
        out = []
        for k, ref in enumerate(refs):
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayActorError as exc:
                self._revive(k, exc)
                again = ([],) if method == "apply" else args  # the replay applied them already
                out.append(ray.get(getattr(self.actors[k], method).remote(*again)))
            except ray.exceptions.RayTaskError as exc:
                raise _unwrap(exc) from None
        return out

    def _revive(self, k: int, exc: Exception) -> None:
        """A fresh actor for shard k, brought to the state of the others by replaying the log."""
        shard = self.shards[k]
        where = f"the Ray actor holding rows {shard.start}..{shard.stop - 1}"
        if self.retried[k]:
            raise TaskexpertError(f"{where} died twice; nothing was written ({exc})") from None
        self.retried[k] = True
        self.actors[k] = self._spawn(shard)
        try:
            self.ray.get(self.actors[k].prepare.remote(self.mean))
            self.ray.get(self.actors[k].apply.remote(self.log))
        except self.ray.exceptions.RayError as again:
            raise TaskexpertError(f"{where} died and its retry failed: {again}") from None

    def _owner(self, row: int) -> int:
        return int(np.searchsorted(self.starts, row, side="right") - 1)

    def rows(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors and statistics of global rows, in the order given."""
        rows = np.asarray(rows, np.int64)
        raw = np.empty((len(rows), self.dim), np.float32)
        stat = np.empty(len(rows), np.float32)
        owners = np.searchsorted(self.starts, rows, side="right") - 1
        for k in np.unique(owners):
            at = np.flatnonzero(owners == k)
            raw[at], stat[at] = self._get(int(k), "rows", rows[at].tolist())
        return raw, stat

    # -- the algorithm
    def run(
        self, n: int, k: int, chosen: np.ndarray, banned: np.ndarray | None, seed: int,
        progress: bool,
    ) -> list[int]:  # fmt: skip
        self.dim = self._get(0, "dim")
        if self.metric == "euclidean":
            self.mean = rounded_mean([s for part in self._all("sums") for s in part], n)
        self._all("prepare", self.mean)
        centre_rows: list[np.ndarray] = []
        for start in range(0, len(chosen), CENTRE_BLOCK):
            raw, stat = self.rows(chosen[start : start + CENTRE_BLOCK])
            centre_rows.append(raw)
            self.log.append(("absorb", centres_from(raw, stat, self.metric, self.mean)))
        marked = chosen if banned is None else np.concatenate([chosen, banned])
        ops: list[Op] = [*self.log, ("mark", marked.tolist())]
        self.log = ops
        maxima = self._all("apply", ops)
        if len(chosen):
            pick = self._farthest(maxima, np.concatenate(centre_rows))
        elif banned is None or len(banned) == 0:
            pick = int(np.random.default_rng(seed).integers(n))
        else:
            pick = int(np.random.default_rng(seed).choice(np.setdiff1d(np.arange(n), banned)))
        picks: list[int] = []
        with progress_bar(total=k, desc="k-center (ray)", unit="pick", enabled=progress) as bar:
            while True:
                picks.append(pick)
                bar.update()
                if self.on_pick is not None:
                    self.on_pick(self, pick)
                if len(picks) == k:
                    return picks
                raw, stat = self._pick_row(pick, maxima)
                centre_rows.append(raw)
                ops = [
                    ("mark", [pick]),
                    ("absorb", centres_from(raw, stat, self.metric, self.mean)),
                ]
                self.log.extend(ops)
                maxima = self._all("apply", ops)
                pick = self._farthest(maxima, np.concatenate(centre_rows))

    def _pick_row(self, pick: int, maxima: list) -> tuple[np.ndarray, np.ndarray]:
        for _, row, raw, stat in maxima:
            if row == pick:
                return raw[None, :], np.array([stat], np.float32)
        return self.rows([pick])

    def _farthest(self, maxima: list, centres: np.ndarray) -> int:
        """`selection.kcenter._farthest` over the shards' maxima and near-ties."""
        top, best = maxima[0][0], maxima[0][1]
        for value, row, _, _ in maxima[1:]:
            if value > top:  # shards are in row order: the first maximum is the lowest row
                top, best = value, row
        if top <= 0.0:
            return best
        answers = self._all("close", top * (1.0 - TIE_SLACK))
        if sum(a[0] for a in answers) == 1:
            return best
        close = np.concatenate([a[1] for a in answers])
        values = np.concatenate([a[2] for a in answers])
        if sum(a[0] for a in answers) > MAX_RERANK:
            close = np.sort(close[np.argsort(-values, kind="stable")[:MAX_RERANK]])
        raw, _ = self.rows(close)
        stacked = np.concatenate([raw, centres])
        exact = exact_nearest(
            stacked, np.arange(len(close)), np.arange(len(close), len(stacked)), self.metric
        )
        return int(close[np.argmax(exact)])


def _unwrap(exc: Exception) -> Exception:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, TaskexpertError):
        return cause
    return TaskexpertError(f"a Ray K-center actor failed: {exc}")


def sharded_kcenter(
    ray,
    shards: list[Shard],
    k: int,
    initial: Sequence[int] | np.ndarray | None = None,
    metric: str = "euclidean",
    seed: int = 0,
    exclude: Sequence[int] | np.ndarray | None = None,
    progress: bool = True,
    chunk_rows: int | None = None,
    on_pick: Callable[[ShardedKCenter, int], None] | None = None,
) -> list[int]:
    """`kcenter_greedy(matrix, k, initial, metric, seed, exclude=...)` with the matrix held as
    `shards` (contiguous, in row order) by one Ray actor each; the same picks."""
    if metric not in METRICS:
        raise InputError(
            f"unknown metric {metric!r}; use one of {', '.join(METRICS)}", field="metric"
        )
    if not shards:
        raise InputError("no shards to pick from", field="embeddings")
    n = shards[-1].stop
    if any(a.stop != b.start for a, b in zip(shards, shards[1:])) or shards[0].start != 0:
        raise InputError("shards must cover the rows contiguously from 0", field="embeddings")
    chosen = _check_initial(initial, n)
    banned = (
        None if exclude is None else np.setdiff1d(_check_initial(exclude, n, "exclude"), chosen)
    )
    _check_k(k, n, chosen, banned)
    if k == 0:
        return []
    rows = chunk_rows or default_chunk_rows(int(shards[0].open().shape[1]))
    driver = ShardedKCenter(ray, shards, metric, rows, on_pick)
    try:
        return driver.run(n, k, chosen, banned, seed, progress)
    finally:
        for actor in driver.actors:
            ray.kill(actor)
