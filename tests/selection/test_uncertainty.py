"""Uncertainty scores against the DiverseEvol reference definitions (one unpadded sequence at a
time, mean over every position) and the order in which each baseline picks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from taskexpert.errors import InputError
from taskexpert.selection.uncertainty import (
    MEASURES,
    most_uncertain,
    position_scores,
    uncertainty_scores,
)

SEQUENCES = [[5, 9, 14, 3], [7], [20, 21, 22, 23, 24, 25, 26, 27, 28], [5, 9, 14, 3], [40, 41]]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference(model, sequences) -> dict[str, list[float]]:
    """The reference code's loop: sort the logits, read top-1/top-2, softmax entropy."""
    out = {m: [] for m in MEASURES}
    with torch.no_grad():
        for seq in sequences:
            logits = model(input_ids=torch.tensor([seq])).logits[0]
            ordered = torch.sort(logits, dim=-1).values
            out["least-confidence"].append(float(ordered[:, -1].mean()))
            out["margin"].append(float((ordered[:, -1] - ordered[:, -2]).mean()))
            probs = torch.softmax(logits, dim=1)
            out["entropy"].append(float((-(torch.log(probs) * probs).sum(dim=1)).mean()))
    return out


def test_position_scores_follow_the_definitions():
    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    scores = position_scores(logits, MEASURES)
    ordered = logits.sort(dim=-1).values
    torch.testing.assert_close(scores["least-confidence"], ordered[..., -1])
    torch.testing.assert_close(scores["margin"], ordered[..., -1] - ordered[..., -2])
    entropy = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(scores["entropy"], entropy)
    assert set(position_scores(logits, ["entropy"])) == {"entropy"}


@pytest.mark.parametrize("batch_size,budget", [(2, None), (16, None), (16, 12)])
def test_batched_scores_equal_the_one_at_a_time_reference(tiny_llama, batch_size, budget):
    got = uncertainty_scores(
        tiny_llama,
        iter(SEQUENCES),
        len(SEQUENCES),
        batch_size=batch_size,
        max_batch_tokens=budget,
        progress=False,
    )
    expected = reference(tiny_llama, SEQUENCES)
    for measure in MEASURES:
        assert got[measure].dtype == np.float32
        np.testing.assert_allclose(got[measure], expected[measure], rtol=1e-5, atol=1e-5)
    # padding never counts: the same sequence in another batch (other padding) scores the same,
    # up to the float32 rounding that a different batch shape brings (~1e-7 relative)
    np.testing.assert_allclose(
        got["least-confidence"][0], got["least-confidence"][3], rtol=1e-6, atol=1e-6
    )


def test_only_the_requested_measure_is_computed(tiny_llama):
    got = uncertainty_scores(tiny_llama, SEQUENCES, len(SEQUENCES), measures=["margin"])
    assert set(got) == {"margin"}


def test_pick_order_lowest_confidence_and_margin_highest_entropy():
    scores = np.array([0.5, 0.1, 0.9, 0.1, 0.3], np.float32)
    assert most_uncertain(scores, "least-confidence", 3).tolist() == [1, 3, 4]  # ties: lowest
    assert most_uncertain(scores, "margin", 2).tolist() == [1, 3]
    assert most_uncertain(scores, "entropy", 2).tolist() == [2, 0]
    assert most_uncertain(scores, "entropy", 0).tolist() == []


def test_bad_input(tiny_llama):
    with pytest.raises(InputError, match="unknown uncertainty measure"):
        most_uncertain(np.zeros(3), "variance", 1)
    with pytest.raises(InputError, match="unknown uncertainty measure"):
        uncertainty_scores(tiny_llama, SEQUENCES, 5, measures=[])
    with pytest.raises(InputError, match="cannot pick 4"):
        most_uncertain(np.zeros(3), "margin", 4)
    with pytest.raises(InputError, match="NaN"):
        most_uncertain(np.array([0.0, np.nan]), "entropy", 1)
    with pytest.raises(InputError, match="expected 6"):
        uncertainty_scores(tiny_llama, SEQUENCES, 6, progress=False)
    with pytest.raises(InputError, match="no tokens"):
        uncertainty_scores(tiny_llama, [[1], []], 2, progress=False)
