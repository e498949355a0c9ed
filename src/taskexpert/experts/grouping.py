"""Choose the expert group: good on the K-shot first, then as different from each other as possible.

docs/design.md Stage 1: adapters below the base model's exact match are dropped; the rest are
ranked by EM rank plus (reasoning) perplexity rank; the top M stay candidates; among the
N-groups whose mean quality is within a tolerance of the best N-group, the one with the lowest
mean pairwise similarity wins, because experts that all learned the same thing add nothing to
a mixture. Exhaustive over C(M, N) when that is small, greedy plus 1-swap refinement beyond.
Every decision is kept as a sentence, so experts.json can say why each adapter is in or out.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from taskexpert.errors import TaskexpertError
from taskexpert.experts.coverage import TokenTable, best_covering_group
from taskexpert.experts.diversity import SimilarityMatrix

EPS = 1e-9
OBJECTIVES = ("diversity", "coverage")


@dataclass
class GroupingConfig:
    """Every knob of the group choice; the defaults are the paper's (N=4) or docs/design.md's."""

    n: int = 4
    m: int | None = None  # candidates kept by quality; None: 2N
    tolerance: float = 0.1  # on the 0..1 quality scale: groups this close to the best qualify
    em_weight: float = 1.0
    perplexity_weight: float = 1.0  # 0 ranks by EM alone
    diversity: bool = True  # False: plain top-N by quality (an ablation)
    # "diversity": the paper's rule; "coverage": lowest routed RPPL among the candidates
    objective: str = "diversity"
    coverage_tolerance: float = 0.02  # coverage: relative slack on routed RPPL for diversity
    # coverage: the smallest group within that slack of the best N-group (N becomes a ceiling)
    shrink: bool = False
    drop_below_base: bool = True
    # off by default (not in the paper): an adapter that predicts the K-shot rationales worse
    # than the base model does is no reasoner, whatever its EM (the blind guesser's signature)
    drop_above_base_perplexity: bool = False
    # off by default (not in the paper): an adapter whose rationale likelihood depends on the
    # question less than the base model's does (contrast score, scoring.reasoning_score, above
    # the base's by more than `grounding_tolerance`) writes the format, not the reasoning:
    # the format-mimic's signature, which plain reasoning perplexity misses
    drop_ungrounded: bool = False
    grounding_tolerance: float = 0.05
    max_pair_similarity: float | None = 0.9  # near-duplicates never share a group if avoidable
    exhaustive_limit: int = 200_000  # largest C(M, N) enumerated; greedy beyond

    def candidates(self) -> int:
        m = self.m if self.m is not None else 2 * self.n
        if self.n < 1 or m < self.n:
            raise ValueError(f"need 1 <= n <= m, got n={self.n}, m={m}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown group objective {self.objective!r}; known: {OBJECTIVES}")
        return m


@dataclass
class GroupChoice:
    """The chosen group, why, and a verdict for every adapter considered."""

    chosen: list[str]
    reason: str
    decisions: dict[str, str]
    quality: dict[str, float]
    search: str
    group_quality: float
    group_similarity: float | None
    warnings: list[str] = field(default_factory=list)
    routed_rppl: float | None = None  # the coverage objective's value, when it chose


def _percentile_ranks(values: Sequence[float], higher_is_better: bool) -> tuple[np.ndarray, list]:
    """Ranks (1 = best, ties share their mean rank) and their 0..1 quality (1 = best)."""
    x = np.array([v if math.isfinite(v) else math.inf for v in values], dtype=float)
    x = np.where(np.isnan(x), math.inf, x)
    key = -x if higher_is_better else x
    order = np.argsort(key, kind="stable")
    ranks = np.empty(len(x))
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and key[order[j + 1]] == key[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    scaled = 1.0 - (ranks - 1) / (len(x) - 1) if len(x) > 1 else np.ones(len(x))
    return scaled, ranks.tolist()


def rank_quality(
    em: Mapping[str, float],
    perplexity: Mapping[str, float] | None,
    em_weight: float = 1.0,
    perplexity_weight: float = 1.0,
) -> tuple[dict[str, float], dict[str, str]]:
    """Weighted EM rank + perplexity rank as a 0..1 quality, and each adapter's ranks in words."""
    names = list(em)
    em_q, em_rank = _percentile_ranks([em[n] for n in names], higher_is_better=True)
    total = em_weight * em_q
    weight = em_weight
    ppl_rank = None
    if perplexity is not None and perplexity_weight > 0:
        ppl_q, ppl_rank = _percentile_ranks([perplexity[n] for n in names], False)
        total = total + perplexity_weight * ppl_q
        weight += perplexity_weight
    if weight <= 0:
        raise ValueError("em_weight and perplexity_weight must not both be 0")
    quality = {n: float(q) for n, q in zip(names, total / weight)}
    words = {}
    for i, name in enumerate(names):
        words[name] = f"EM rank {em_rank[i]:g}" + (
            f", perplexity rank {ppl_rank[i]:g}" if ppl_rank is not None else ""
        )
    return quality, words


def _best_mean_with(i: int, q: np.ndarray, n: int) -> float:
    """The best mean quality of any N-group that contains candidate i."""
    others = np.sort(np.delete(q, i))[::-1][: n - 1]
    return float((q[i] + others.sum()) / n)


def _mean_pair_similarity(group: Sequence[int], sim: np.ndarray) -> float:
    pairs = list(itertools.combinations(group, 2))
    return float(np.mean([sim[a, b] for a, b in pairs])) if pairs else 0.0


def _exhaustive(q: np.ndarray, sim: np.ndarray, n: int, threshold: float, cap: float | None):
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


def _greedy(q: np.ndarray, sim: np.ndarray, n: int, threshold: float, cap: float | None):
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
    return _improve_by_swaps(chosen, q, sim, threshold, None if relaxed else cap), relaxed


def _improve_by_swaps(group, q, sim, threshold, cap, max_rounds: int = 100) -> list[int]:
    """1-swap local search: trade a member for an outsider while that lowers mean similarity."""
    group = list(group)

    def ok(candidate: list[int]) -> bool:
        if q[candidate].mean() < threshold - EPS:
            return False
        return cap is None or all(
            sim[a, b] <= cap + EPS for a, b in itertools.combinations(candidate, 2)
        )

    for _ in range(max_rounds):
        current = _mean_pair_similarity(group, sim)
        best, best_value = None, current - EPS
        for position, outsider in itertools.product(range(len(group)), range(len(q))):
            if outsider in group:
                continue
            trial = group[:position] + [outsider] + group[position + 1 :]
            value = _mean_pair_similarity(trial, sim)
            if value < best_value and ok(trial):
                best, best_value = trial, value
        if best is None:
            return group
        group = best
    return group


def choose_group(
    em: Mapping[str, float],
    perplexity: Mapping[str, float] | None,
    similarity: SimilarityMatrix | None,
    config: GroupingConfig | None = None,
    base_em: float | None = None,
    token_nll: Mapping[str, Sequence[Sequence[float]]] | None = None,
    base_perplexity: float | None = None,
    contrast: Mapping[str, float] | None = None,
    base_contrast: float | None = None,
) -> GroupChoice:
    """docs/design.md's group rule over scored adapters (names in `em`; the base model excluded).

    With `config.objective == "coverage"` the last step instead picks, among the top M, the
    group with the lowest routed reasoning perplexity (coverage.py); `token_nll` then gives
    each adapter's per-token NLL on the K-shot rationales. `contrast` and `base_contrast` (the
    contrast reasoning score) serve `config.drop_ungrounded`.
    """
    config = config or GroupingConfig()
    m = config.candidates()
    decisions: dict[str, str] = {}
    warnings: list[str] = []
    names = list(em)
    if config.drop_below_base and base_em is not None:
        for name in names:
            if em[name] < base_em - EPS:
                decisions[name] = (
                    f"dropped: EM {em[name]:.3f} is below the base model's {base_em:.3f}"
                )
    if config.drop_above_base_perplexity and perplexity is not None:
        if base_perplexity is None:
            raise ValueError("drop_above_base_perplexity needs the base model's perplexity")
        for name in names:
            if name not in decisions and perplexity[name] > base_perplexity + EPS:
                decisions[name] = (
                    f"dropped: perplexity {perplexity[name]:.4g} is above the base model's "
                    f"{base_perplexity:.4g} (predicts the rationales worse than no adapter)"
                )
    if config.drop_ungrounded:
        if contrast is None or base_contrast is None:
            raise ValueError("drop_ungrounded needs the contrast scores of the adapters and base")
        limit = base_contrast * (1 + config.grounding_tolerance)
        for name in names:
            if name not in decisions and contrast[name] > limit:
                decisions[name] = (
                    f"dropped: contrast {contrast[name]:.4g} is above the base model's "
                    f"{base_contrast:.4g} by more than {config.grounding_tolerance:.0%} (its "
                    "rationales depend on the question less than the base's: format, not "
                    "reasoning)"
                )
    survivors = [n for n in names if n not in decisions]
    if not survivors:

        def dropped_by(prefix: str) -> int:
            return sum(why.startswith(f"dropped: {prefix} ") for why in decisions.values())

        parts = []
        if below_em := dropped_by("EM"):
            parts.append(f"{below_em} with exact match below the base model's {base_em:.3f}")
        if above_ppl := dropped_by("perplexity"):
            parts.append(f"{above_ppl} with perplexity above its {base_perplexity:.4g}")
        if ungrounded := dropped_by("contrast"):
            parts.append(f"{ungrounded} less grounded in the question than it")
        raise TaskexpertError(
            f"every adapter was dropped by the base-model filters ({', '.join(parts)}); "
            "there is nothing worth mixing (use a larger K-shot or turn those filters off)"
        )
    quality, ranks = rank_quality(
        {n: em[n] for n in survivors},
        {n: perplexity[n] for n in survivors} if perplexity is not None else None,
        config.em_weight,
        config.perplexity_weight,
    )
    ordered = sorted(survivors, key=lambda n: (-quality[n], -em[n], names.index(n)))
    top = ordered[:m]
    for place, name in enumerate(ordered[m:], start=m + 1):
        decisions[name] = (
            f"dropped: quality {quality[name]:.3f} ({ranks[name]}) places {place} of "
            f"{len(ordered)}, outside the top M={m}"
        )
    n = config.n
    if len(top) < n:
        warnings.append(
            f"only {len(top)} adapter(s) pass the quality filter; the group has {len(top)} "
            f"expert(s) instead of N={n}"
        )
        n = len(top)
    q = np.array([quality[c] for c in top])
    sim = similarity.subset(top).matrix if similarity is not None else None
    best_quality = float(np.sort(q)[::-1][:n].mean())
    routed = None
    if config.objective == "coverage" and n > 1:
        if token_nll is None:
            raise ValueError("the coverage objective needs per-token NLLs of the candidates")
        table = TokenTable([token_nll[c] for c in top])
        cap = config.max_pair_similarity if sim is not None else None
        group, search, relaxed = best_covering_group(
            table, n, sim, cap, config.coverage_tolerance, shrink=config.shrink
        )
        routed = table.routed_perplexity(group)
        if relaxed:
            warnings.append(
                f"no group avoids every pair above similarity {cap}; "
                "near-duplicates had to share the group"
            )
        which = "the smallest group" if config.shrink else f"the least similar {n}-group"
        summary = (
            f"routed reasoning perplexity {routed:.4g} (each rationale token scored by the "
            f"member that predicts it best), {which} within {config.coverage_tolerance:.0%} of "
            f"the lowest ({search}); best single member "
            f"{min(table.routed_perplexity([i]) for i in group):.4g}"
        )
    elif not config.diversity or n == 1:
        group = list(range(n))
        search = "top-N by quality"
        summary = f"the {n} best by quality (mean {best_quality:.3f})"
    else:
        if sim is None:
            raise ValueError("diversity needs a similarity matrix")
        threshold = best_quality - config.tolerance
        cap = config.max_pair_similarity
        total = math.comb(len(top), n)
        if total <= config.exhaustive_limit:
            group, eligible, total, relaxed = _exhaustive(q, sim, n, threshold, cap)
            search = "exhaustive"
            pool = f"{eligible} of C({len(top)},{n})={total} groups within the tolerance"
        else:
            group, relaxed = _greedy(q, sim, n, threshold, cap)
            search = "greedy"
            pool = f"greedy search over C({len(top)},{n})={total} groups"
        if relaxed:
            warnings.append(
                f"no near-best group avoids every pair above similarity {cap}; "
                "near-duplicates had to share the group"
            )
        summary = (
            f"lowest mean pairwise similarity "
            f"({_mean_pair_similarity(group, sim):.3f}) with mean quality "
            f"{q[group].mean():.3f} >= best {best_quality:.3f} - tolerance {config.tolerance} "
            f"({pool})"
        )
    chosen = [top[i] for i in group]
    group_similarity = _mean_pair_similarity(group, sim) if sim is not None else None
    for name in chosen:
        decisions[name] = f"chosen: quality {quality[name]:.3f} ({ranks[name]})"
    for i, name in enumerate(top):
        if name in chosen:
            continue
        twin = None
        if sim is not None and config.max_pair_similarity is not None:
            closest = max(group, key=lambda j: sim[i, j])
            if sim[i, closest] > config.max_pair_similarity:
                twin = f"near-duplicate of {top[closest]} (similarity {sim[i, closest]:.3f})"
        if twin:
            why = twin
        elif routed is not None:
            why = "a group without it covers the K-shot as well or better, or is more diverse"
        elif not config.diversity or n == 1:
            why = "not among the top N"
        elif _best_mean_with(i, q, n) < best_quality - config.tolerance - EPS:
            why = "no group with it comes within the quality tolerance"
        else:
            why = "a more diverse group of near-best quality was preferred"
        decisions[name] = (
            f"candidate, not chosen: quality {quality[name]:.3f} ({ranks[name]}); {why}"
        )
    reason = f"chose {', '.join(chosen)}: {summary}"
    return GroupChoice(
        chosen=chosen,
        reason=reason,
        decisions={name: decisions[name] for name in names},
        quality=quality,
        search=search,
        group_quality=float(q[group].mean()),
        group_similarity=group_similarity,
        warnings=warnings,
        routed_rppl=routed,
    )
