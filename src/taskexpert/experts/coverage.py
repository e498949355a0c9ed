"""Group choice by coverage: the N experts that, routed per token, explain the K-shot best.

Why this exists beside the paper's rule: reasoning perplexity scores one adapter at a time, but
the mixture routes every token to its own experts. On a task that needs two skills, each
relevant expert predicts only its half of a rationale well, so no single adapter stands out
and the paper's rule (quality rank, then diversity) picks on noise. Scoring a group the way the
mixture will use it does not have that blind spot: the group's *routed* reasoning perplexity
takes, for every rationale token, the NLL of the member that predicts it best (the oracle
router), then averages per example like reasoning perplexity:

    routed_RPPL(G) = mean_i exp( mean_t min_{m in G} NLL_m(i, t) )

For one adapter it equals its reasoning perplexity. It is a facility-location objective, so a
near-duplicate of a member adds little, and a blind guesser adds only where it beats every
member, which on rationale tokens it does not. "Little" is not nothing: two seeds of one expert
err on different tokens, and the oracle router takes the better of the two on each, so the pure
minimum put both reverse experts in one group on the testbed. A small relative tolerance
(default 2%) then prefers the least similar group among those within it of the lowest value,
as the paper's rule does with quality. Exhaustive over C(M, N) when that is small, greedy
(always the member that lowers it most) with 1-swap refinement beyond. Optionally (`shrink`)
the group is the smallest within that tolerance of the best N-group, so that N is a ceiling
rather than a quota: when fewer than N adapters can reason about the task, filling the group
carries in whatever passes the filters (on the testbed, the format-mimic beside the two
multiple-choice experts).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

MAX_NLL = 50.0  # exp overflow guard, as in scoring
# C(M, N) up to this is searched exhaustively (each group costs one pass over K-shot tokens)
EXHAUSTIVE_LIMIT = 5_000


class TokenTable:
    """Every candidate's per-token NLL on the K-shot rationales, flattened for fast group maths."""

    def __init__(self, per_candidate: Sequence[Sequence[Sequence[float]]]) -> None:
        if not per_candidate:
            raise ValueError("no candidates to cover the K-shot with")
        lengths = [len(x) for x in per_candidate[0]]
        rows = []
        for index, examples in enumerate(per_candidate):
            if [len(x) for x in examples] != lengths:
                raise ValueError(
                    f"candidate {index} was scored on other tokens than candidate 0 "
                    "(same K-shot and tokenizer needed)"
                )
            rows.append(np.concatenate([np.asarray(x, dtype=np.float64) for x in examples]))
        self.nll = np.stack(rows)  # candidates x tokens
        self.example = np.repeat(np.arange(len(lengths)), lengths)
        self.counts = np.maximum(np.bincount(self.example, minlength=len(lengths)), 1)
        self.has_tokens = np.bincount(self.example, minlength=len(lengths)) > 0

    def routed_perplexity(self, group: Sequence[int]) -> float:
        """mean_i exp(mean_t min over the group of NLL): lower is better."""
        best = self.nll[list(group)].min(axis=0)
        per_example = np.bincount(self.example, weights=best, minlength=len(self.counts))
        per_example = per_example / self.counts
        values = np.exp(np.minimum(per_example[self.has_tokens], MAX_NLL))
        return float(values.mean()) if values.size else math.nan


def _fits(group: Sequence[int], sim: np.ndarray | None, cap: float | None) -> bool:
    if sim is None or cap is None:
        return True
    return all(sim[a, b] <= cap + 1e-9 for a, b in itertools.combinations(group, 2))


def _mean_similarity(group: Sequence[int], sim: np.ndarray | None) -> float:
    if sim is None or len(group) < 2:
        return 0.0
    return float(np.mean([sim[a, b] for a, b in itertools.combinations(group, 2)]))


def _limit(best: float, tolerance: float) -> float:
    return best * (1 + tolerance) + 1e-12


def _least_similar_within(scored, sim, limit: float):
    """Among (value, group) pairs with value <= limit, the group with the lowest mean pairwise
    similarity; ties go to the lower value. None when no pair qualifies."""
    near = [(v, g) for v, g in scored if v <= limit]
    if not near:
        return None
    return list(min(near, key=lambda x: (_mean_similarity(x[1], sim), x[0], x[1]))[1])


def _exhaustive(table: TokenTable, n: int, sim, cap, tolerance):
    """(group, relaxed, lowest value of a size-n group) over every size-n group."""
    scored = [
        (table.routed_perplexity(g), g) for g in itertools.combinations(range(len(table.nll)), n)
    ]
    clean = [(v, g) for v, g in scored if _fits(g, sim, cap)]
    best = min(v for v, _ in clean or scored)
    return _least_similar_within(clean or scored, sim, _limit(best, tolerance)), not clean, best


def _swaps(group: list[int], count: int) -> list[list[int]]:
    return [
        group[:i] + [c] + group[i + 1 :]
        for i in range(len(group))
        for c in range(count)
        if c not in group
    ]


def _greedy(table: TokenTable, n: int, sim, cap, tolerance):
    """(group, relaxed, its value before the similarity swaps): greedy, then 1-swaps."""
    count = len(table.nll)
    group: list[int] = []
    relaxed = False
    while len(group) < n:
        rest = [c for c in range(count) if c not in group]
        clean = [c for c in rest if _fits(group + [c], sim, cap)]
        relaxed |= not clean
        group.append(min(clean or rest, key=lambda c: table.routed_perplexity(group + [c])))

    def usable(g: list[int]) -> bool:
        return relaxed or _fits(g, sim, cap)

    for _ in range(100):  # 1-swap refinement of the value
        current = table.routed_perplexity(group)
        best = min(filter(usable, _swaps(group, count)), key=table.routed_perplexity, default=None)
        if best is None or table.routed_perplexity(best) >= current - 1e-12:
            break
        group = best
    best = table.routed_perplexity(group)
    limit = _limit(best, tolerance)
    for _ in range(100):  # then 1-swaps that lower similarity within the tolerance
        options = [
            g
            for g in _swaps(group, count)
            if usable(g)
            and table.routed_perplexity(g) <= limit
            and _mean_similarity(g, sim) < _mean_similarity(group, sim) - 1e-12
        ]
        if not options:
            break
        group = min(options, key=lambda g: _mean_similarity(g, sim))
    return group, relaxed, best


def _search(table: TokenTable, n: int, sim, cap, tolerance, exhaustive_limit: int):
    """(group, how it was searched, relaxed, lowest value found for size n)."""
    count = len(table.nll)
    if math.comb(count, n) <= exhaustive_limit:
        group, relaxed, best = _exhaustive(table, n, sim, cap, tolerance)
        return group, f"exhaustive over C({count},{n})={math.comb(count, n)} groups", relaxed, best
    group, relaxed, best = _greedy(table, n, sim, cap, tolerance)
    return group, f"greedy with 1-swap refinement over C({count},{n}) groups", relaxed, best


def _smallest_within(table: TokenTable, n: int, limit: float, sim, cap, exhaustive_limit: int):
    """The fewest members whose routed value is within `limit`: the least similar such group
    of that size (exhaustive), or the greedy one; None if no smaller size reaches it."""
    count = len(table.nll)
    for k in range(1, n):
        if math.comb(count, k) <= exhaustive_limit:
            scored = [
                (table.routed_perplexity(g), g)
                for g in itertools.combinations(range(count), k)
                if _fits(g, sim, cap)
            ]
            group = _least_similar_within(scored, sim, limit)
            if group is not None:
                return group, f"exhaustive over sizes 1-{k}"
        else:
            group, relaxed, value = _greedy(table, k, sim, cap, 0.0)
            if not relaxed and value <= limit:
                return group, f"greedy over sizes 1-{k}"
    return None


def best_covering_group(
    table: TokenTable,
    n: int,
    sim: np.ndarray | None = None,
    cap: float | None = None,
    tolerance: float = 0.0,
    exhaustive_limit: int = EXHAUSTIVE_LIMIT,
    shrink: bool = False,
) -> tuple[list[int], str, bool]:
    """The N-group to mix, its search, and whether near-duplicates (pairs above `cap`) had to
    share it because no group avoided them.

    The group has the lowest routed reasoning perplexity, or, with `tolerance` > 0 and a
    similarity matrix, is the least similar group within that relative slack of the lowest.
    With `shrink`, the group is the smallest one within the tolerance of the best N-group: a
    member the oracle router would hardly use (a format-mimic beside the experts, say) is left
    out rather than carried in to fill N.
    """
    count = len(table.nll)
    if not 1 <= n <= count:
        raise ValueError(f"need 1 <= n <= {count} candidates, got n={n}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    group, search, relaxed, best = _search(table, n, sim, cap, tolerance, exhaustive_limit)
    if shrink and n > 1:
        # relative to the lowest N-group value, not to the (more diverse) group chosen
        smaller = _smallest_within(table, n, _limit(best, tolerance), sim, cap, exhaustive_limit)
        if smaller is not None:
            group, how = smaller
            return group, f"{how}: within {tolerance:.0%} of the best {n}-group ({search})", False
    return group, search, relaxed
