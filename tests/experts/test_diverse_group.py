"""The diversity search on its own, and the objective table that grouping dispatches through."""

from __future__ import annotations

import numpy as np

from taskexpert.experts.diverse_group import exhaustive_search, greedy_search
from taskexpert.experts.grouping import OBJECTIVE_TABLE, OBJECTIVES


def test_every_configurable_objective_has_an_entry():
    assert set(OBJECTIVES) <= set(OBJECTIVE_TABLE)


def test_greedy_finds_the_exhaustive_answer_on_a_clear_case():
    # 0 and 1 are twins, 2 and 3 differ from both: the best diverse pair is {0, 2} or {0, 3}
    q = np.array([1.0, 0.95, 0.9, 0.5])
    sim = np.array(
        [
            [1.0, 0.99, 0.1, 0.2],
            [0.99, 1.0, 0.1, 0.2],
            [0.1, 0.1, 1.0, 0.3],
            [0.2, 0.2, 0.3, 1.0],
        ]
    )
    group, eligible, total, relaxed = exhaustive_search(q, sim, 2, threshold=0.85, cap=0.9)
    assert sorted(group) == [0, 2] and total == 6 and not relaxed
    greedy, relaxed = greedy_search(q, sim, 2, threshold=0.85, cap=0.9)
    assert sorted(greedy) == [0, 2] and not relaxed
