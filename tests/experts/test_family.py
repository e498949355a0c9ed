"""The family test and the default rule: one adapter per family, no guessers."""

import numpy as np
import pytest
import torch

from taskexpert.bank import LoraModule
from taskexpert.experts.config import ExpertSelectionConfig
from taskexpert.experts.diversity import SimilarityMatrix, delta_cosine
from taskexpert.experts.family import (
    generation_similarity,
    one_per_family,
    rationale_match,
    unsupported_answers,
)
from taskexpert.experts.grouping import GroupingConfig, choose_group

GOLD = ["3 plus 4 is 7. The answer is B.", "5 plus 5 is 10. The answer is C."]


def test_generation_similarity_is_one_for_the_same_text_and_low_for_other_text():
    assert generation_similarity(GOLD, GOLD) == pytest.approx(1.0, abs=1e-12)
    other = ["The letters are x, y, z.", "zzzz"]
    assert generation_similarity(GOLD, other) < 0.5
    with pytest.raises(ValueError, match="cannot be compared"):
        generation_similarity(GOLD, GOLD[:1])


def test_a_rescaled_copy_has_weight_cosine_one():
    """diversity.py normalises the deltas, so scale (alpha/r) never hides a copy."""
    torch.manual_seed(0)
    a, b = torch.randn(4, 8), torch.randn(6, 4)
    module = LoraModule(a, b, alpha=8.0, scaling=2.0)
    rescaled = LoraModule(a * 3.0, b, alpha=2.0, scaling=0.5)
    assert delta_cosine(module, rescaled) == pytest.approx(1.0, abs=1e-9)


def test_the_format_mimic_is_right_for_the_wrong_reasons():
    targets = GOLD * 2
    expert = rationale_match(targets, [True] * 4, targets)
    mimic_text = ["8 plus 1 is 9. The answer is B.", "2 plus 6 is 8. The answer is C."] * 2
    mimic = rationale_match(mimic_text, [True] * 4, targets)
    lucky = rationale_match(["B"] * 4, [True, False, False, False], targets)
    silent = rationale_match(["?"] * 4, [False] * 4, targets)
    assert expert == (pytest.approx(1.0, abs=1e-12), 4) and silent == (None, 0)
    match = {"expert": expert, "mimic": mimic, "lucky": lucky, "silent": silent}
    dropped = unsupported_answers(list(match), match, margin=0.1)
    assert set(dropped) == {"mimic", "lucky"}  # "silent" has no right answer to judge
    assert "guesser" in dropped["mimic"] and "expert's 1.00" in dropped["mimic"]
    # a margin wider than the gap keeps the mimic: the test depends on its threshold
    assert "mimic" not in unsupported_answers(list(match), match, margin=1 - mimic[0] + 0.01)
    # one right answer is no reference: nothing to compare with, nothing dropped
    assert unsupported_answers(["lucky"], match, margin=0.0) == {}


def sim(names, pairs, centered_pairs=None):
    """A similarity matrix at 0.1 off the diagonal but for `pairs`; with `centered_pairs`, a
    centered matrix at 0 but for those."""

    def fill(base, given):
        matrix = np.full((len(names), len(names)), base)
        np.fill_diagonal(matrix, 1.0)
        for (a, b), value in given.items():
            i, j = names.index(a), names.index(b)
            matrix[i, j] = matrix[j, i] = value
        return matrix

    matrix = fill(0.1, pairs)
    centered = None if centered_pairs is None else fill(0.0, centered_pairs)
    return SimilarityMatrix(list(names), matrix, "delta", np.ones_like(matrix, dtype=int), centered)


def test_one_per_family_keeps_the_better_scored_member():
    names = ["expert", "twin", "copy", "other"]
    generations = {
        "expert": GOLD,
        "twin": ["3 plus 4 is 7. The answer is B.", "5 plus 5 is 10. The answer is C!"],
        "copy": ["x", "y"],
        "other": ["The letters are a, b.", "No."],
    }
    similarity = sim(names, {("expert", "copy"): 1.0})
    dropped = one_per_family(names, similarity, generations, 0.9, 0.9)
    assert set(dropped) == {"twin", "copy"}
    assert dropped["twin"].startswith("dropped: same family as expert (generations")
    assert "copy or rescaled copy" in dropped["copy"]
    # the order decides who stays; thresholds of 1+ find no family
    assert "expert" in one_per_family(["twin", *names[:1]], similarity, generations, 0.9, 0.9)
    assert one_per_family(names, similarity, generations, 1.1, 1.0) == {}
    # `keep` stops the walk: only the best `keep` distinct ones are compared
    late = ["expert", "other", "twin"]
    assert one_per_family(late, similarity, generations, 0.9, 0.9, keep=2) == {}
    assert set(one_per_family(late, similarity, generations, 0.9, 0.9, keep=3)) == {"twin"}


def test_one_per_family_joins_twins_by_centered_weights_where_behaviour_cannot():
    """Two experts that do not solve the target write unlike text for it; their updates net
    of the bank's common part still share their task's direction (family.py)."""
    names = ["expert", "twin", "other"]
    generations = {"expert": GOLD, "twin": ["x", "y"], "other": ["a", "b"]}
    similarity = sim(names, {}, {("expert", "twin"): 0.1, ("expert", "other"): 0.03})
    dropped = one_per_family(names, similarity, generations, 0.9, 0.9, centered_threshold=0.05)
    assert set(dropped) == {"twin"}
    assert "centered weight similarity 0.100" in dropped["twin"]
    # off (None), or a bank too small to center (NaN): behaviour and copies only
    assert one_per_family(names, similarity, generations, 0.9, 0.9) == {}
    small = sim(names, {}, {("expert", "twin"): float("nan")})
    assert one_per_family(names, small, generations, 0.9, 0.9, centered_threshold=0.05) == {}


def scored_bank():
    """mc_add_quiz in miniature: an expert, its twin, the mimic, an answer guesser, others."""
    names = ["expert", "twin", "mimic", "answers", "other_a", "other_b"]
    em = {"expert": 0.8, "twin": 0.75, "mimic": 0.8, "answers": 0.85, "other_a": 0.3}
    em["other_b"] = 0.3
    rppl = {"expert": 1.2, "twin": 1.25, "mimic": 1.2, "answers": 300.0, "other_a": 3.0}
    rppl["other_b"] = 3.1
    generations = {
        "expert": GOLD,
        "twin": GOLD,
        "mimic": ["8 plus 1 is 9. The answer is B.", "2 plus 6 is 8. The answer is C."],
        "answers": ["B", "C"],
        "other_a": ["The letters are a, b.", "q"],
        "other_b": ["r", "Reversed: ba."],
    }
    right = [True, True]
    match = {n: rationale_match(generations[n], right, GOLD) for n in names}
    return names, em, rppl, generations, match


def test_the_default_rule_keeps_one_per_family_and_no_guesser_the_paper_rule_does_not():
    names, em, rppl, generations, match = scored_bank()
    similarity = sim(names, {})

    def choose(config: ExpertSelectionConfig):
        return choose_group(
            em, rppl, similarity, config.grouping(), rationale_match=match,
            base_em=0.2, base_perplexity=6.0, generations=generations,
        )  # fmt: skip

    family = choose(ExpertSelectionConfig(n=4, group_objective="diversity"))
    assert family.chosen[0] == "expert" and {"twin", "mimic", "answers"}.isdisjoint(family.chosen)
    assert family.decisions["twin"].startswith("dropped: same family as expert")
    assert family.decisions["mimic"].startswith("dropped: guesser")
    assert "above the base model's" in family.decisions["answers"]
    paper = choose(ExpertSelectionConfig(n=4, rule="paper"))
    assert {"twin", "mimic", "answers"} <= set(paper.chosen)


def test_rules_are_presets_that_settings_beside_them_override():
    default = ExpertSelectionConfig()
    assert default.rule == "family" and default.one_per_family and default.drop_unsupported
    assert default.group_objective == "coverage" and default.drop_above_base_perplexity
    paper = ExpertSelectionConfig(rule="paper")
    assert not paper.one_per_family and not paper.drop_unsupported
    assert paper.group_objective == "diversity" and not paper.drop_above_base_perplexity
    mixed = ExpertSelectionConfig(rule="paper", group_objective="coverage")
    assert mixed.group_objective == "coverage" and not mixed.one_per_family
    # the rule survives a round trip (experts.json records the resolved settings)
    again = ExpertSelectionConfig.model_validate(mixed.model_dump())
    assert again == mixed
    assert isinstance(paper.grouping(), GroupingConfig) and not paper.grouping().one_per_family
