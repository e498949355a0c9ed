import itertools
import math

import numpy as np
import pytest

from taskexpert.experts.coverage import TokenTable, best_covering_group
from taskexpert.experts.grouping import GroupingConfig, choose_group

LOW, HIGH = 0.05, 4.0  # NLL of a token the model knows / does not know


def two_skill_bank(examples: int = 6, half: int = 5):
    """Per-token NLLs on rationales whose first half needs skill x and second half skill y.

    x and y experts each know their half; x2 is x's near-twin, slightly better on average;
    `guesser` knows nothing but the last token (the answer); `generalist` is mediocre on all.
    """

    def rows(first: float, second: float, last: float | None = None) -> list[list[float]]:
        row = [first] * half + [second] * half
        if last is not None:
            row[-1] = last
        return [list(row) for _ in range(examples)]

    return {
        "x": rows(LOW, HIGH),
        "x2": rows(LOW * 0.9, HIGH * 0.95),
        "y": rows(HIGH, LOW),
        "guesser": rows(HIGH, HIGH, last=0.0),
        "generalist": rows(1.5, 1.5),
    }


def test_routed_perplexity_of_one_adapter_is_its_reasoning_perplexity():
    nll = [[0.5, 1.5], [2.0], [0.1, 0.2, 0.3]]
    table = TokenTable([nll])
    expected = np.mean([math.exp(np.mean(x)) for x in nll])
    assert table.routed_perplexity([0]) == pytest.approx(expected, rel=1e-6)


def test_routed_perplexity_takes_each_token_from_the_best_member():
    table = TokenTable([[[1.0, 3.0]], [[3.0, 1.0]]])
    assert table.routed_perplexity([0, 1]) == pytest.approx(math.exp(1.0), rel=1e-6)
    assert table.routed_perplexity([0]) == pytest.approx(math.exp(2.0), rel=1e-6)


def test_complementary_experts_beat_the_best_single_and_its_twin():
    bank = two_skill_bank()
    names = list(bank)
    table = TokenTable([bank[n] for n in names])
    group, search, relaxed = best_covering_group(table, 2)
    assert {names[i] for i in group} == {"x2", "y"}
    assert "exhaustive" in search and not relaxed
    # the single best by reasoning perplexity is the twin, and x+x2 covers nothing new
    singles = {n: table.routed_perplexity([i]) for i, n in enumerate(names)}
    assert min(singles, key=singles.get) == "generalist"
    assert table.routed_perplexity([0, 1]) > table.routed_perplexity(group)


def test_guesser_adds_nothing_where_experts_know_the_answer():
    bank = two_skill_bank()
    bank["x"] = [row[:-1] + [0.0] for row in bank["x"]]
    bank["y"] = [row[:-1] + [0.0] for row in bank["y"]]
    names = list(bank)
    table = TokenTable([bank[n] for n in names])
    x, y, guesser = names.index("x"), names.index("y"), names.index("guesser")
    assert table.routed_perplexity([x, y, guesser]) == pytest.approx(
        table.routed_perplexity([x, y]), rel=1e-6
    )


def test_near_duplicate_cap_keeps_twins_apart_unless_unavoidable():
    bank = two_skill_bank()
    names = list(bank)
    table = TokenTable([bank[n] for n in names])
    sim = np.full((5, 5), 0.1)
    np.fill_diagonal(sim, 1.0)
    sim[0, 1] = sim[1, 0] = 0.97  # x, x2
    group, _, relaxed = best_covering_group(table, 3, sim, cap=0.9)
    assert not {0, 1} <= set(group) and not relaxed
    everything_similar = np.full((5, 5), 0.95)
    _, _, relaxed = best_covering_group(table, 3, everything_similar, cap=0.9)
    assert relaxed


def test_tolerance_trades_a_little_coverage_for_a_less_similar_group():
    # two seeds of one expert that err on different tokens of their half, the other half's
    # expert, and an unrelated adapter that is mediocre everywhere
    first, second = [LOW] * 5, [HIGH] * 5
    x = [[HIGH, HIGH, LOW, LOW, LOW] + second for _ in range(4)]
    x2 = [[LOW, LOW, HIGH, HIGH, LOW] + second for _ in range(4)]
    y = [[HIGH] * 5 + first for _ in range(4)]
    z = [[1.0] * 10 for _ in range(4)]
    table = TokenTable([x, x2, y, z])
    sim = np.array(
        [[1, 0.5, 0.05, 0.05], [0.5, 1, 0.05, 0.05], [0.05, 0.05, 1, 0.05], [0.05] * 3 + [1]]
    )
    twins, _, _ = best_covering_group(table, 3, sim, cap=0.9, tolerance=0.02)
    assert sorted(twins) == [0, 1, 2]
    diverse, _, _ = best_covering_group(table, 3, sim, cap=0.9, tolerance=0.3)
    assert 3 in diverse and 2 in diverse and not {0, 1} <= set(diverse)
    assert table.routed_perplexity(diverse) <= 1.3 * table.routed_perplexity(twins)
    greedy, _, _ = best_covering_group(table, 3, sim, cap=0.9, tolerance=0.3, exhaustive_limit=0)
    assert 3 in greedy and 2 in greedy and not {0, 1} <= set(greedy)
    with pytest.raises(ValueError, match="tolerance"):
        best_covering_group(table, 2, sim, tolerance=-1)


@pytest.mark.parametrize("seed", range(4))
def test_greedy_finds_the_planted_group_like_exhaustive(seed):
    rng = np.random.default_rng(seed)
    skills, per_skill, tokens = 3, 4, 6
    per_candidate = []
    for c in range(9):  # candidates 0..2 each know one skill; the rest are noise
        row = rng.uniform(2.0, 4.0, size=skills * tokens)
        if c < skills:
            row[c * tokens : (c + 1) * tokens] = rng.uniform(0.0, 0.2, size=tokens)
        per_candidate.append([list(row) for _ in range(per_skill)])
    table = TokenTable(per_candidate)
    exhaustive, _, _ = best_covering_group(table, 3)
    greedy, search, _ = best_covering_group(table, 3, exhaustive_limit=0)
    assert sorted(exhaustive) == sorted(greedy) == [0, 1, 2]
    assert "greedy" in search
    brute = min(itertools.combinations(range(9), 3), key=table.routed_perplexity)
    assert sorted(brute) == [0, 1, 2]


def test_mismatched_token_counts_are_refused():
    with pytest.raises(ValueError, match="other tokens"):
        TokenTable([[[1.0, 2.0]], [[1.0]]])
    with pytest.raises(ValueError, match="1 <= n"):
        best_covering_group(TokenTable([[[1.0]]]), 2)


def test_choose_group_with_the_coverage_objective_explains_itself():
    bank = two_skill_bank()
    em = {n: 0.0 for n in bank}
    rppl = {n: float(np.mean([math.exp(np.mean(r)) for r in bank[n]])) for n in bank}
    config = GroupingConfig(n=2, m=5, objective="coverage", drop_above_base_perplexity=False)
    choice = choose_group(em, rppl, None, config, base_em=0.0, token_nll=bank)
    assert set(choice.chosen) == {"x2", "y"}  # x2 is a little better on x's half
    assert "routed reasoning perplexity" in choice.reason
    assert choice.routed_rppl == pytest.approx(math.exp((LOW * 0.9 + LOW) / 2), rel=1e-6)
    assert "covers the K-shot as well or better" in choice.decisions["generalist"]
    with pytest.raises(ValueError, match="per-token"):
        choose_group(em, rppl, None, config, base_em=0.0)
    with pytest.raises(ValueError, match="objective"):
        GroupingConfig(objective="magic").candidates()


def test_shrink_leaves_out_members_the_router_would_hardly_use():
    bank = two_skill_bank()
    names = ["x", "y", "guesser", "generalist"]
    table = TokenTable([bank[n] for n in names])
    full, _, _ = best_covering_group(table, 4)
    assert len(full) == 4  # without shrink, N is a quota: the guesser and generalist fill it
    group, search, relaxed = best_covering_group(table, 4, tolerance=0.02, shrink=True)
    assert sorted(names[i] for i in group) == ["x", "y"] and not relaxed
    assert "within 2% of the best 4-group" in search
    # one expert alone is far from the pair, so the group does not shrink below what it needs
    assert table.routed_perplexity([names.index("x")]) > 1.02 * table.routed_perplexity(group)
    # with exhaustive search off, the greedy path gives the same group
    greedy, how, _ = best_covering_group(table, 4, tolerance=0.02, shrink=True, exhaustive_limit=1)
    assert sorted(names[i] for i in greedy) == ["x", "y"] and "greedy" in how


def test_choose_group_shrinks_only_when_asked():
    bank = two_skill_bank()
    em = {n: 0.5 for n in bank}
    rppl = {n: 2.0 for n in bank}
    token_nll = dict(bank)
    base = dict(objective="coverage", n=4, m=5, coverage_tolerance=0.02)
    base["drop_above_base_perplexity"] = False  # no base perplexity in this bank
    kept = choose_group(em, rppl, None, GroupingConfig(**base), base_em=0.0, token_nll=token_nll)
    shrunk = choose_group(
        em, rppl, None, GroupingConfig(**base, shrink=True), base_em=0.0, token_nll=token_nll
    )
    assert len(kept.chosen) == 4
    assert set(shrunk.chosen) in ({"x", "y"}, {"x2", "y"}) and "smallest group" in shrunk.reason


def test_shrink_measures_its_slack_from_the_lowest_n_group_not_the_chosen_one():
    # [a, b] is the lowest pair (1.00); [a, c] is within 2% (1.015) and less similar, so it is
    # the chosen pair; a alone (1.03) is within 2% of the chosen pair but not of the lowest
    a = [[0.0, 0.0, 3 * math.log(1.03)]]
    b = [[9.0, 9.0, 0.0]]
    c = [[9.0, 9.0, 3 * math.log(1.015)]]
    table = TokenTable([a, b, c])
    sim = np.array([[1.0, 0.8, 0.0], [0.8, 1.0, 0.5], [0.0, 0.5, 1.0]])
    assert table.routed_perplexity([0, 1]) == pytest.approx(1.0, rel=1e-6)
    group, _, _ = best_covering_group(table, 2, sim, tolerance=0.02)
    assert sorted(group) == [0, 2]
    shrunk, _, _ = best_covering_group(table, 2, sim, tolerance=0.02, shrink=True)
    assert sorted(shrunk) == [0, 2]  # a alone is 3% above the lowest pair: no shrink
    shrunk, _, _ = best_covering_group(table, 2, sim, tolerance=0.04, shrink=True)
    assert shrunk == [0]
