"""The paper's diversity search: the least similar N-group among those of near-best quality.

grouping.py's "diversity" objective. Candidates are indices into `q` (their 0..1 quality) and
`sim` (their pairwise similarity); `threshold` is the lowest mean quality a group may have and
`cap` the highest similarity any pair in it may have (relaxed when no group avoids it).
Exhaustive over C(M, N) when that is small, greedy plus 1-swap refinement beyond.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

EPS = 1e-9


def best_mean_with(i: int, q: np.ndarray, n: int) -> float:
    """The best mean quality of any N-group that contains candidate i."""
    others = np.sort(np.delete(q, i))[::-1][: n - 1]
    return float((q[i] + others.sum()) / n)


def mean_pair_similarity(group: Sequence[int], sim: np.ndarray) -> float:
    pairs = list(itertools.combinations(group, 2))
    return float(np.mean([sim[a, b] for a, b in pairs])) if pairs else 0.0


def exhaustive_search(q: np.ndarray, sim: np.ndarray, n: int, threshold: float, cap: float | None):
    """All N-subsets of the candidates: the least similar among those of near-best quality."""
    combos = np.array(list(itertools.combinations(range(len(q)), n)), dtype=np.int64)
    quality = q[combos].mean(axis=1)
    pairs = list(itertools.combinations(range(n), 2))
    pair_sims = np.stack([sim[combos[:, a], combos[:, b]] for a, b in pairs], axis=1)
    mean_sim = pair_sims.mean(axis=1)
    eligible = quality >= threshold - EPS
    relaxed = False
    if cap is not None:
        without_duplicates = eligible & (pair_sims.max(axis=1) <= cap + EPS)
        relaxed = not without_duplicates.any()
        eligible = eligible if relaxed else without_duplicates
    # lexsort: last key first -> lowest similarity, then highest quality, then enumeration order
    index = np.flatnonzero(eligible)
    best = index[np.lexsort((index, -quality[index], mean_sim[index]))[0]]
    return list(combos[best]), int(eligible.sum()), len(combos), relaxed


def greedy_search(q: np.ndarray, sim: np.ndarray, n: int, threshold: float, cap: float | None):
    """Start from the best candidate, add the least similar one that keeps the group feasible."""
    chosen = [int(np.argmax(q))]
    relaxed = False
    while len(chosen) < n:
        rest = [i for i in range(len(q)) if i not in chosen]
        slots = n - len(chosen) - 1
        feasible = []
        for c in rest:
            others = sorted((q[i] for i in rest if i != c), reverse=True)[:slots]
            if (q[chosen].sum() + q[c] + sum(others)) / n >= threshold - EPS:
                feasible.append(c)
        if cap is not None:
            clean = [c for c in feasible if max(sim[c, i] for i in chosen) <= cap + EPS]
            relaxed |= not clean
            feasible = clean or feasible
        chosen.append(min(feasible, key=lambda c: (np.mean([sim[c, i] for i in chosen]), -q[c])))
    return improve_by_swaps(chosen, q, sim, threshold, None if relaxed else cap), relaxed


def improve_by_swaps(group, q, sim, threshold, cap, max_rounds: int = 100) -> list[int]:
    """1-swap local search: trade a member for an outsider while that lowers mean similarity."""
    group = list(group)

    def ok(candidate: list[int]) -> bool:
        if q[candidate].mean() < threshold - EPS:
            return False
        return cap is None or all(
            sim[a, b] <= cap + EPS for a, b in itertools.combinations(candidate, 2)
        )

    for _ in range(max_rounds):
        current = mean_pair_similarity(group, sim)
        best, best_value = None, current - EPS
        for position, outsider in itertools.product(range(len(group)), range(len(q))):
            if outsider in group:
                continue
            trial = group[:position] + [outsider] + group[position + 1 :]
            value = mean_pair_similarity(trial, sim)
            if value < best_value and ok(trial):
                best, best_value = trial, value
        if best is None:
            return group
        group = best
    return group
