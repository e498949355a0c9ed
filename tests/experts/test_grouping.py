import itertools

import numpy as np
import pytest

from taskexpert.errors import TaskexpertError
from taskexpert.experts.diversity import SimilarityMatrix
from taskexpert.experts.grouping import GroupingConfig, choose_group, rank_quality, rule_settings


def paper(**settings) -> GroupingConfig:
    """Paper A's rule: these tests check its mechanics (filters, tolerance, diversity)."""
    return GroupingConfig(**{**rule_settings("paper"), **settings})


def matrix(names, pairs, default=0.1):
    """A similarity matrix with `default` off the diagonal except for the given pairs."""
    sim = np.full((len(names), len(names)), default)
    np.fill_diagonal(sim, 1.0)
    for (a, b), value in pairs.items():
        i, j = names.index(a), names.index(b)
        sim[i, j] = sim[j, i] = value
    return SimilarityMatrix(list(names), sim, "delta", np.ones_like(sim, dtype=int))


def clustered(clusters, seed):
    """Names c<k>_<i>, near-duplicates inside a cluster, unrelated across; near-equal quality."""
    rng = np.random.default_rng(seed)
    names = [f"c{k}_{i}" for k, size in enumerate(clusters) for i in range(size)]
    cluster = {n: n.split("_")[0] for n in names}
    sim = np.zeros((len(names), len(names)))
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            same = cluster[a] == cluster[b]
            sim[i, j] = 1.0 if i == j else (0.95 if same else 0.05) + rng.uniform(0, 0.02)
    sim = (sim + sim.T) / 2
    em = {n: 0.8 + rng.choice([0.0, 0.05]) for n in names}
    ppl = {n: float(rng.uniform(2.0, 3.0)) for n in names}
    similarity = SimilarityMatrix(names, sim, "delta", np.ones_like(sim, dtype=int))
    return em, ppl, similarity, cluster


def test_rank_quality_adds_em_and_perplexity_ranks_with_weights():
    em = {"expert": 0.8, "guesser": 0.9, "weak": 0.3}
    rppl = {"expert": 1.1, "guesser": 8000.0, "weak": 5.0}
    quality, words = rank_quality(em, rppl)
    assert quality == {"expert": 0.75, "guesser": 0.5, "weak": 0.25}
    assert words["guesser"] == "EM rank 1, perplexity rank 3"
    only_em, _ = rank_quality(em, rppl, perplexity_weight=0)
    assert max(only_em, key=only_em.get) == "guesser"
    tied, words = rank_quality({"a": 0.5, "b": 0.5, "c": 0.1}, None)
    assert tied["a"] == tied["b"] == 0.75 and words["a"] == "EM rank 1.5"


def test_diverse_group_among_near_equal_quality_skips_near_duplicates():
    names = ["a", "a_twin", "b", "c", "d"]
    em = {"a": 0.9, "a_twin": 0.9, "b": 0.85, "c": 0.85, "d": 0.2}
    ppl = {"a": 1.5, "a_twin": 1.6, "b": 1.8, "c": 1.9, "d": 9.0}
    sim = matrix(names, {("a", "a_twin"): 0.99, ("b", "c"): 0.3})
    choice = choose_group(em, ppl, sim, paper(n=3, tolerance=0.2))
    assert choice.search == "exhaustive"
    assert set(choice.chosen) == {"a", "b", "c"}
    assert "near-duplicate of a (similarity 0.990)" in choice.decisions["a_twin"]
    assert choice.decisions["a"].startswith("chosen")
    # without diversity the two best by quality win, twins and all
    plain = choose_group(em, ppl, sim, paper(n=2, diversity=False))
    assert plain.chosen == ["a", "a_twin"] and plain.search == "top-N by quality"


def test_tolerance_bounds_what_diversity_may_cost():
    names = ["best", "good", "far_but_weak"]
    em = {"best": 0.9, "good": 0.8, "far_but_weak": 0.5}
    sim = matrix(names, {("best", "good"): 0.6, ("best", "far_but_weak"): 0.0})
    strict = choose_group(em, None, sim, paper(n=2, tolerance=0.0))
    assert strict.chosen == ["best", "good"]
    loose = choose_group(em, None, sim, paper(n=2, tolerance=0.5))
    assert set(loose.chosen) == {"best", "far_but_weak"}
    assert "lowest mean pairwise similarity (0.000)" in loose.reason


def test_below_base_and_outside_top_m_are_dropped_with_reasons():
    em = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6, "low": 0.1}
    names = list(em)
    choice = choose_group(em, None, matrix(names, {}), paper(n=2, m=3), base_em=0.2)
    assert choice.decisions["low"] == "dropped: EM 0.100 is below the base model's 0.200"
    assert "outside the top M=3" in choice.decisions["d"]
    assert choice.decisions["c"].startswith("candidate, not chosen")
    assert list(choice.decisions) == names


def test_group_shrinks_with_a_warning_and_lifts_or_fails_when_nothing_beats_the_base():
    em = {"a": 0.9, "b": 0.1, "c": 0.1}
    choice = choose_group(em, None, matrix(list(em), {}), paper(n=2), base_em=0.5)
    assert choice.chosen == ["a"] and "instead of N=2" in choice.warnings[0]
    # nothing beats the base: by default the best of the rest, and the warning says why
    lifted = choose_group(em, None, matrix(list(em), {}), paper(n=2), base_em=0.95)
    assert len(lifted.chosen) == 2 and "a" in lifted.chosen
    assert any(
        "3 with exact match below the base model's 0.950" in w and "lifted" in w
        for w in lifted.warnings
    )
    fail = paper(n=2, when_none_pass="fail")
    with pytest.raises(TaskexpertError, match="3 with exact match below the base model's 0.950"):
        choose_group(em, None, matrix(list(em), {}), fail, base_em=0.95)
    with pytest.raises(ValueError, match="n <= m"):
        choose_group(em, None, None, paper(n=3, m=2))


def test_adapters_that_reason_worse_than_the_base_can_be_dropped():
    em = {"expert": 0.6, "guesser": 0.7, "other": 0.5}
    rppl = {"expert": 1.1, "guesser": 80.0, "other": 1.9}
    sim = matrix(list(em), {})
    kept = choose_group(em, rppl, sim, paper(n=2, m=3), base_em=0.5)
    assert "guesser" in kept.chosen  # the paper's rule: EM rank carries it in
    config = paper(n=2, m=3, drop_above_base_perplexity=True)
    choice = choose_group(em, rppl, sim, config, base_em=0.5, base_perplexity=2.0)
    assert sorted(choice.chosen) == ["expert", "other"]
    assert "above the base model's 2" in choice.decisions["guesser"]
    with pytest.raises(ValueError, match="base model's perplexity"):
        choose_group(em, rppl, sim, config, base_em=0.5)
    # every adapter above the base's perplexity (a real bank on an unseen format): the filter
    # is lifted with a warning, the other filters still apply
    lifted = choose_group(em, rppl, sim, config, base_em=0.55, base_perplexity=1.0)
    assert sorted(lifted.chosen) == ["expert", "guesser"]  # "other" is below the base's EM
    assert "EM 0.500 is below" in lifted.decisions["other"]
    assert any("the perplexity comparison with the base model was lifted" in w
               for w in lifted.warnings)  # fmt: skip
    guesser_only = choose_group(em, rppl, sim, config, base_em=0.65, base_perplexity=1.0)
    assert guesser_only.chosen == ["guesser"]  # lifted: the only one at the base's EM
    lifted_both = choose_group(em, rppl, sim, config, base_em=0.75, base_perplexity=1.0)
    assert sorted(lifted_both.chosen) == ["expert", "guesser"]  # the best two of the rest
    assert any("perplexity and EM comparison with the base model was lifted" in w
               for w in lifted_both.warnings)  # fmt: skip
    fail = paper(n=2, m=3, drop_above_base_perplexity=True, when_none_pass="fail")
    with pytest.raises(TaskexpertError, match=r"3 with exact match below the base model's 0.750"):
        choose_group(em, rppl, sim, fail, base_em=0.75, base_perplexity=1.0)
    with pytest.raises(TaskexpertError, match="2 with perplexity above"):  # fail lifts nothing
        choose_group(em, rppl, sim, fail, base_em=0.55, base_perplexity=1.0)


def test_adapters_less_grounded_in_the_question_than_the_base_can_be_dropped():
    """The format-mimic: reasoning perplexity as good as the expert's, but its rationale
    likelihood hardly depends on which question was asked (contrast near 1)."""
    em = {"expert": 0.8, "mimic": 0.6, "half": 0.0}
    rppl = {"expert": 1.1, "mimic": 1.2, "half": 2.4}
    contrast = {"expert": 0.5, "mimic": 1.0, "half": 0.83}  # "half": within 5% of the base
    sim = matrix(list(em), {})
    config = paper(n=3, m=3)
    assert "mimic" in choose_group(em, rppl, sim, config, base_em=0.0).chosen
    config = paper(n=3, m=3, drop_ungrounded=True)
    choice = choose_group(em, rppl, sim, config, base_em=0.0, contrast=contrast, base_contrast=0.82)
    assert sorted(choice.chosen) == ["expert", "half"]
    assert "depend on the question less" in choice.decisions["mimic"]
    strict = paper(n=3, m=3, drop_ungrounded=True, grounding_tolerance=0.0)
    choice = choose_group(em, rppl, sim, strict, base_em=0.0, contrast=contrast, base_contrast=0.82)
    assert choice.chosen == ["expert"]
    with pytest.raises(ValueError, match="contrast scores"):
        choose_group(em, rppl, sim, config, base_em=0.0)
    with pytest.raises(TaskexpertError, match="3 less grounded in the question than it"):
        choose_group(em, rppl, sim, config, base_em=0.0, contrast=contrast, base_contrast=0.1)


def test_duplicates_share_a_group_only_when_unavoidable():
    names = ["a", "a2", "b"]
    sim = matrix(names, {("a", "a2"): 0.97, ("a", "b"): 0.95, ("a2", "b"): 0.96})
    em = dict.fromkeys(names, 0.5)
    choice = choose_group(em, None, sim, paper(n=2, tolerance=1.0))
    assert "near-duplicates had to share the group" in choice.warnings[0]
    assert set(choice.chosen) == {"a", "b"}


@pytest.mark.parametrize("seed", range(6))
def test_greedy_agrees_with_exhaustive_on_small_clustered_banks(seed):
    em, ppl, sim, cluster = clustered([3, 2, 2, 3], seed)
    config = paper(n=4, m=10, tolerance=0.3)
    exhaustive = choose_group(em, ppl, sim, config)
    greedy = choose_group(em, ppl, sim, paper(n=4, m=10, tolerance=0.3, exhaustive_limit=1))
    assert exhaustive.search == "exhaustive" and greedy.search == "greedy"
    # one expert per cluster, and the same group
    assert len({cluster[n] for n in exhaustive.chosen}) == 4
    assert set(greedy.chosen) == set(exhaustive.chosen)


def test_exhaustive_really_minimises_similarity_within_the_tolerance():
    rng = np.random.default_rng(0)
    names = [f"x{i}" for i in range(7)]
    raw = rng.uniform(0, 1, (7, 7))
    sim = (raw + raw.T) / 2
    np.fill_diagonal(sim, 1.0)
    em = {n: float(rng.uniform()) for n in names}
    similarity = SimilarityMatrix(names, sim, "delta", np.ones_like(sim, dtype=int))
    config = paper(n=3, m=7, tolerance=0.15, max_pair_similarity=None)
    choice = choose_group(em, None, similarity, config)
    quality, _ = rank_quality(em, None)
    best = np.mean(sorted(quality.values(), reverse=True)[:3])
    eligible = [
        g
        for g in itertools.combinations(names, 3)
        if np.mean([quality[n] for n in g]) >= best - 0.15 - 1e-9
    ]

    def mean_sim(group):
        return np.mean([similarity(a, b) for a, b in itertools.combinations(group, 2)])

    assert mean_sim(choice.chosen) == pytest.approx(min(mean_sim(g) for g in eligible), rel=1e-6)


def test_verdicts_tell_low_quality_from_less_diverse():
    names = ["a", "b", "c", "d"]
    em = {"a": 0.9, "b": 0.85, "c": 0.84, "d": 0.2}
    sim = matrix(names, {("a", "b"): 0.5, ("a", "c"): 0.1, ("b", "c"): 0.1})
    choice = choose_group(em, None, sim, paper(n=2, m=4, tolerance=0.2))
    assert set(choice.chosen) == {"a", "c"}
    assert choice.decisions["b"].endswith("a more diverse group of near-best quality was preferred")
    assert choice.decisions["d"].endswith("no group with it comes within the quality tolerance")
