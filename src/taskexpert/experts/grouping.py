"""Choose the expert group: good on the K-shot first, then as different from each other as possible.

docs/design.md Stage 1: adapters below the base model's exact match are dropped; the rest are
ranked by EM rank plus (reasoning) perplexity rank; the top M stay candidates; among the
N-groups whose mean quality is within a tolerance of the best N-group, the one with the lowest
mean pairwise similarity wins, because experts that all learned the same thing add nothing to
a mixture. Exhaustive over C(M, N) when that is small, greedy plus 1-swap refinement beyond.
Every decision is kept as a sentence, so experts.json can say why each adapter is in or out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from taskexpert.errors import TaskexpertError
from taskexpert.experts.config import GROUPING_NAMES, RULES, ExpertSelectionConfig
from taskexpert.experts.coverage import TokenTable, best_covering_group
from taskexpert.experts.diverse_group import (
    best_mean_with,
    exhaustive_search,
    greedy_search,
    mean_pair_similarity,
)
from taskexpert.experts.diversity import SimilarityMatrix
from taskexpert.experts.family import one_per_family, unsupported_answers

EPS = 1e-9
OBJECTIVES = ("diversity", "coverage")


def _default(name: str):
    """ExpertSelectionConfig's default of the setting this field carries."""
    field_name = GROUPING_NAMES.get(name, name)
    return ExpertSelectionConfig.model_fields[field_name].default


@dataclass
class GroupingConfig:
    """Every knob of the group choice. The defaults are ExpertSelectionConfig's (the paper's N=4
    or docs/design.md's), read from there so that each is written once."""

    n: int = _default("n")
    m: int | None = _default("m")  # candidates kept by quality; None: 2N
    # on the 0..1 quality scale: groups this close to the best qualify
    tolerance: float = _default("tolerance")
    em_weight: float = _default("em_weight")
    perplexity_weight: float = _default("perplexity_weight")  # 0 ranks by EM alone
    diversity: bool = _default("diversity")  # False: plain top-N by quality (an ablation)
    # "diversity": the paper's rule; "coverage": lowest routed RPPL among the candidates
    objective: str = _default("objective")
    # coverage: relative slack on routed RPPL for diversity
    coverage_tolerance: float = _default("coverage_tolerance")
    # coverage: the smallest group within that slack of the best N-group (N becomes a ceiling)
    shrink: bool = _default("shrink")
    drop_below_base: bool = _default("drop_below_base")
    # off by default (not in the paper): an adapter that predicts the K-shot rationales worse
    # than the base model does is no reasoner, whatever its EM (the blind guesser's signature)
    drop_above_base_perplexity: bool = _default("drop_above_base_perplexity")
    # "lift": when the filters drop every adapter, those two are lifted (perplexity first)
    # with a warning; "fail": stop
    when_none_pass: str = _default("when_none_pass")
    # off by default (not in the paper): an adapter whose rationale likelihood depends on the
    # question less than the base model's does (contrast score, scoring.reasoning_score, above
    # the base's by more than `grounding_tolerance`) writes the format, not the reasoning:
    # the format-mimic's signature, which plain reasoning perplexity misses
    drop_ungrounded: bool = _default("drop_ungrounded")
    grounding_tolerance: float = _default("grounding_tolerance")
    # family.py: the format-mimic (right answers, other problems' rationales) is dropped, and
    # at most one adapter of a family (behaviour or weights alike) stays, the better-scored
    drop_unsupported: bool = _default("drop_unsupported")
    rationale_match_margin: float = _default("rationale_match_margin")
    one_per_family: bool = _default("one_per_family")
    family_generation_similarity: float = _default("family_generation_similarity")
    family_weight_similarity: float | None = _default("family_weight_similarity")
    # near-duplicates never share a group if avoidable
    max_pair_similarity: float | None = _default("max_pair_similarity")
    # largest C(M, N) enumerated; greedy beyond
    exhaustive_limit: int = _default("exhaustive_limit")

    def candidates(self) -> int:
        m = self.m if self.m is not None else 2 * self.n
        if self.n < 1 or m < self.n:
            raise ValueError(f"need 1 <= n <= m, got n={self.n}, m={m}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown group objective {self.objective!r}; known: {OBJECTIVES}")
        return m


def rule_settings(rule: str) -> dict[str, object]:
    """The GroupingConfig keywords of a named rule (config.RULES), e.g. `GroupingConfig(n=2,
    **rule_settings("paper"))` for Paper A's rule."""
    ours = {name: field for field, name in GROUPING_NAMES.items()}
    return {ours.get(key, key): value for key, value in RULES[rule].items()}


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


def _drop_below_base_em(names, em, base_em, **_) -> dict[str, str]:
    return {
        name: f"dropped: EM {em[name]:.3f} is below the base model's {base_em:.3f}"
        for name in names
        if em[name] < base_em - EPS
    }


def _drop_above_base_perplexity(names, perplexity, base_perplexity, **_) -> dict[str, str]:
    if base_perplexity is None:
        raise ValueError("drop_above_base_perplexity needs the base model's perplexity")
    return {
        name: (
            f"dropped: perplexity {perplexity[name]:.4g} is above the base model's "
            f"{base_perplexity:.4g} (predicts the rationales worse than no adapter)"
        )
        for name in names
        if perplexity[name] > base_perplexity + EPS
    }


def _drop_ungrounded(names, contrast, base_contrast, config, **_) -> dict[str, str]:
    if contrast is None or base_contrast is None:
        raise ValueError("drop_ungrounded needs the contrast scores of the adapters and base")
    limit = base_contrast * (1 + config.grounding_tolerance)
    return {
        name: (
            f"dropped: contrast {contrast[name]:.4g} is above the base model's "
            f"{base_contrast:.4g} by more than {config.grounding_tolerance:.0%} (its "
            "rationales depend on the question less than the base's: format, not "
            "reasoning)"
        )
        for name in names
        if contrast[name] > limit
    }


def _drop_unsupported(names, rationale_match, config, **_) -> dict[str, str]:
    return unsupported_answers(names, rationale_match, config.rationale_match_margin)


# The base-model comparisons `when_none_pass: lift` may lift, in that order, as its warning
# names them.
LIFTED_NAMES = {_drop_above_base_perplexity: "perplexity", _drop_below_base_em: "EM"}


def _base_filters(config: GroupingConfig, base_em, perplexity, rationale_match) -> list:
    """The filters `config` turns on (and has the inputs for), in the order they apply."""
    filters = []
    if config.drop_below_base and base_em is not None:
        filters.append(_drop_below_base_em)
    if config.drop_above_base_perplexity and perplexity is not None:
        filters.append(_drop_above_base_perplexity)
    if config.drop_ungrounded:
        filters.append(_drop_ungrounded)
    if config.drop_unsupported and rationale_match is not None:
        filters.append(_drop_unsupported)
    return filters


def _apply_filters(names: Sequence[str], filters: list, inputs: dict) -> dict[str, str]:
    """Each filter in turn over the adapters no earlier one dropped; why each was dropped."""
    decisions: dict[str, str] = {}
    for drop in filters:
        decisions.update(drop(names=[n for n in names if n not in decisions], **inputs))
    return decisions


def _dropped_by_filters(decisions: Mapping[str, str], base_em, base_perplexity) -> str:
    """ "Every adapter was dropped by the base-model filters (...)", counted per filter."""

    def dropped_by(prefix: str) -> int:
        return sum(why.startswith(f"dropped: {prefix} ") for why in decisions.values())

    parts = []
    if guessers := dropped_by("guesser:"):
        parts.append(f"{guessers} right for the wrong reasons")
    if below_em := dropped_by("EM"):
        parts.append(f"{below_em} with exact match below the base model's {base_em:.3f}")
    if above_ppl := dropped_by("perplexity"):
        parts.append(f"{above_ppl} with perplexity above its {base_perplexity:.4g}")
    if ungrounded := dropped_by("contrast"):
        parts.append(f"{ungrounded} less grounded in the question than it")
    return f"every adapter was dropped by the base-model filters ({', '.join(parts)})"


def _nothing_left(decisions: Mapping[str, str], base_em, base_perplexity) -> TaskexpertError:
    """The error when the filters dropped every adapter and none may be lifted."""
    return TaskexpertError(
        f"{_dropped_by_filters(decisions, base_em, base_perplexity)}; there is nothing worth "
        "mixing (use a larger K-shot or turn those filters off)"
    )


@dataclass
class _Pool:
    """The top-M candidates an objective chooses N from (indices below are into `top`)."""

    top: list[str]
    q: np.ndarray  # 0..1 quality of each candidate
    sim: np.ndarray | None  # candidate x candidate similarity
    n: int
    best_quality: float  # the mean quality of the best N-group
    config: GroupingConfig
    token_nll: Mapping[str, Sequence[Sequence[float]]] | None


@dataclass
class _Outcome:
    group: list[int]
    search: str
    summary: str
    warnings: list[str] = field(default_factory=list)
    routed: float | None = None


def _near_duplicates_warning(cap, near_best: bool) -> str:
    return (
        f"no {'near-best ' if near_best else ''}group avoids every pair above similarity "
        f"{cap}; near-duplicates had to share the group"
    )


def _top_n(pool: _Pool) -> _Outcome:
    """An ablation (config.diversity off) and the only choice when N is 1."""
    summary = f"the {pool.n} best by quality (mean {pool.best_quality:.3f})"
    return _Outcome(list(range(pool.n)), "top-N by quality", summary)


def _top_n_passed_over(pool: _Pool, i: int) -> str:
    return "not among the top N"


def _most_diverse(pool: _Pool) -> _Outcome:
    """The paper's rule: the least similar N-group within the tolerance of the best quality."""
    q, sim, n, config = pool.q, pool.sim, pool.n, pool.config
    if sim is None:
        raise ValueError("diversity needs a similarity matrix")
    threshold = pool.best_quality - config.tolerance
    cap = config.max_pair_similarity
    total = math.comb(len(pool.top), n)
    if total <= config.exhaustive_limit:
        group, eligible, total, relaxed = exhaustive_search(q, sim, n, threshold, cap)
        search = "exhaustive"
        where = f"{eligible} of C({len(pool.top)},{n})={total} groups within the tolerance"
    else:
        group, relaxed = greedy_search(q, sim, n, threshold, cap)
        search = "greedy"
        where = f"greedy search over C({len(pool.top)},{n})={total} groups"
    summary = (
        f"lowest mean pairwise similarity "
        f"({mean_pair_similarity(group, sim):.3f}) with mean quality "
        f"{q[group].mean():.3f} >= best {pool.best_quality:.3f} - tolerance {config.tolerance} "
        f"({where})"
    )
    warnings = [_near_duplicates_warning(cap, near_best=True)] if relaxed else []
    return _Outcome(group, search, summary, warnings)


def _most_diverse_passed_over(pool: _Pool, i: int) -> str:
    if best_mean_with(i, pool.q, pool.n) < pool.best_quality - pool.config.tolerance - EPS:
        return "no group with it comes within the quality tolerance"
    return "a more diverse group of near-best quality was preferred"


def _best_coverage(pool: _Pool) -> _Outcome:
    """coverage.py: the lowest routed reasoning perplexity, then the least similar."""
    config, n = pool.config, pool.n
    if pool.token_nll is None:
        raise ValueError("the coverage objective needs per-token NLLs of the candidates")
    table = TokenTable([pool.token_nll[c] for c in pool.top])
    cap = config.max_pair_similarity if pool.sim is not None else None
    group, search, relaxed = best_covering_group(
        table, n, pool.sim, cap, config.coverage_tolerance, shrink=config.shrink
    )
    routed = table.routed_perplexity(group)
    which = "the smallest group" if config.shrink else f"the least similar {n}-group"
    summary = (
        f"routed reasoning perplexity {routed:.4g} (each rationale token scored by the "
        f"member that predicts it best), {which} within {config.coverage_tolerance:.0%} of "
        f"the lowest ({search}); best single member "
        f"{min(table.routed_perplexity([i]) for i in group):.4g}"
    )
    warnings = [_near_duplicates_warning(cap, near_best=False)] if relaxed else []
    return _Outcome(group, search, summary, warnings, routed)


def _best_coverage_passed_over(pool: _Pool, i: int) -> str:
    return "a group without it covers the K-shot as well or better, or is more diverse"


@dataclass(frozen=True)
class _Objective:
    choose: Callable[[_Pool], _Outcome]
    passed_over: Callable[[_Pool, int], str]  # why candidate i is not in the group


# "top-N" is not a config.objective of its own: diversity=False or N=1 falls back to it
OBJECTIVE_TABLE: dict[str, _Objective] = {
    "diversity": _Objective(_most_diverse, _most_diverse_passed_over),
    "coverage": _Objective(_best_coverage, _best_coverage_passed_over),
    "top-N": _Objective(_top_n, _top_n_passed_over),
}


def _objective_for(config: GroupingConfig, n: int) -> str:
    if n == 1:
        return "top-N"
    if config.objective == "coverage":
        return "coverage"
    return "diversity" if config.diversity else "top-N"


def _same_family(survivors, em, perplexity, similarity, generations, config, keep):
    """family.one_per_family over the survivors in quality order (best first), until `keep`
    are kept; the verdicts of those dropped. Weight copies use the near-duplicate threshold
    (max_pair_similarity), the one setting for "these weights are the same adapter"."""
    ordered, _, _ = _quality_order(survivors, em, perplexity, survivors, config)
    return one_per_family(
        ordered,
        similarity,
        generations,
        config.max_pair_similarity,
        config.family_generation_similarity,
        keep,
        config.family_weight_similarity,
    )


def _quality_order(survivors, em, perplexity, names, config):
    """The survivors best first by quality rank (ties: EM, then `names` order), with the
    quality and rank explanation of each."""
    quality, ranks = rank_quality(
        {n: em[n] for n in survivors},
        {n: perplexity[n] for n in survivors} if perplexity is not None else None,
        config.em_weight,
        config.perplexity_weight,
    )
    ordered = sorted(survivors, key=lambda n: (-quality[n], -em[n], names.index(n)))
    return ordered, quality, ranks


def _rank_candidates(survivors, em, perplexity, names, config, m, decisions):
    """Quality-rank the survivors and keep the top M (`decisions` gets the rest's verdicts)."""
    ordered, quality, ranks = _quality_order(survivors, em, perplexity, names, config)
    for place, name in enumerate(ordered[m:], start=m + 1):
        decisions[name] = (
            f"dropped: quality {quality[name]:.3f} ({ranks[name]}) places {place} of "
            f"{len(ordered)}, outside the top M={m}"
        )
    return ordered[:m], quality, ranks


def _explain(pool, outcome, objective, quality, ranks, decisions) -> list[str]:
    """The verdict on each candidate (into `decisions`); returns the chosen names."""
    top, sim, cap = pool.top, pool.sim, pool.config.max_pair_similarity
    chosen = [top[i] for i in outcome.group]
    for name in chosen:
        decisions[name] = f"chosen: quality {quality[name]:.3f} ({ranks[name]})"
    for i, name in enumerate(top):
        if name in chosen:
            continue
        why = None
        if sim is not None and cap is not None:
            closest = max(outcome.group, key=lambda j: sim[i, j])
            if sim[i, closest] > cap:
                why = f"near-duplicate of {top[closest]} (similarity {sim[i, closest]:.3f})"
        why = why or objective.passed_over(pool, i)
        decisions[name] = (
            f"candidate, not chosen: quality {quality[name]:.3f} ({ranks[name]}); {why}"
        )
    return chosen


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
    generations: Mapping[str, Sequence[str]] | None = None,
    rationale_match: Mapping[str, tuple[float | None, int]] | None = None,
) -> GroupChoice:
    """docs/design.md's group rule over scored adapters (names in `em`; the base model excluded).

    Three steps: the base-model filters, the quality rank to the top M, and an objective from
    OBJECTIVE_TABLE over those. With `config.objective == "coverage"` the last step picks,
    among the top M, the group with the lowest routed reasoning perplexity (coverage.py);
    `token_nll` then gives each adapter's per-token NLL on the K-shot rationales. `contrast`
    and `base_contrast` (the contrast reasoning score) serve `config.drop_ungrounded`;
    `rationale_match` (family.rationale_match per adapter) serves `config.drop_unsupported`
    and `generations` (per adapter, on the K-shot) the behavioural half of
    `config.one_per_family`, whose weight half uses `similarity`. When the filters drop every
    adapter, `config.when_none_pass` "lift" lifts the perplexity comparison with the base,
    then also the EM one, until some adapter is left, with a warning; "fail" stops.
    """
    config = config or GroupingConfig()
    m = config.candidates()
    names = list(em)
    inputs = dict(
        em=em,
        perplexity=perplexity,
        contrast=contrast,
        base_em=base_em,
        base_perplexity=base_perplexity,
        base_contrast=base_contrast,
        rationale_match=rationale_match,
        config=config,
    )
    filters = _base_filters(config, base_em, perplexity, rationale_match)
    decisions = _apply_filters(names, filters, inputs)
    warnings: list[str] = []
    survivors = [n for n in names if n not in decisions]
    if not survivors and config.when_none_pass == "lift":
        # Nothing beats the base model on the K-shot (a real bank trained on other tasks:
        # SmolLM2's 16 adapters on ARC-Challenge all had a higher perplexity). Lift the
        # comparisons with the base, the perplexity one first, until some adapter is left:
        # the group is the best of the rest, the wrong-reason filters still apply, and a
        # run's verdict measures what the group is worth.
        comparisons = [f for f in LIFTED_NAMES if f in filters]  # perplexity first
        for count in range(1, len(comparisons) + 1):
            lifted = _apply_filters(
                names, [f for f in filters if f not in comparisons[:count]], inputs
            )
            if [n for n in names if n not in lifted]:
                what = " and ".join(LIFTED_NAMES[f] for f in comparisons[:count])
                warnings.append(
                    f"{_dropped_by_filters(decisions, base_em, base_perplexity)}; the {what} "
                    "comparison with the base model was lifted, so the group is the best of "
                    "the rest and may not beat the base model"
                )
                decisions = lifted
                survivors = [n for n in names if n not in decisions]
                break
    if not survivors:
        raise _nothing_left(decisions, base_em, base_perplexity)
    if config.one_per_family:
        family = (em, perplexity, similarity, generations, config)
        decisions.update(_same_family(survivors, *family, keep=m))
        survivors = [n for n in survivors if n not in decisions]
    top, quality, ranks = _rank_candidates(survivors, em, perplexity, names, config, m, decisions)
    if config.one_per_family:  # reranking without the dropped can lift one not yet compared
        twins = _same_family(top, *family, keep=None)
        decisions.update(twins)
        top = [n for n in top if n not in twins]
    n = config.n
    if len(top) < n:
        warnings.append(
            f"only {len(top)} adapter(s) pass the quality filter; the group has {len(top)} "
            f"expert(s) instead of N={n}"
        )
        n = len(top)
    q = np.array([quality[c] for c in top])
    pool = _Pool(
        top=top,
        q=q,
        sim=similarity.subset(top).matrix if similarity is not None else None,
        n=n,
        best_quality=float(np.sort(q)[::-1][:n].mean()),
        config=config,
        token_nll=token_nll,
    )
    objective = OBJECTIVE_TABLE[_objective_for(config, n)]
    outcome = objective.choose(pool)
    warnings.extend(outcome.warnings)
    chosen = _explain(pool, outcome, objective, quality, ranks, decisions)
    return GroupChoice(
        chosen=chosen,
        reason=f"chose {', '.join(chosen)}: {outcome.summary}",
        decisions={name: decisions[name] for name in names},
        quality=quality,
        search=outcome.search,
        group_quality=float(q[outcome.group].mean()),
        group_similarity=(
            mean_pair_similarity(outcome.group, pool.sim) if pool.sim is not None else None
        ),
        warnings=warnings,
        routed_rppl=outcome.routed,
    )
