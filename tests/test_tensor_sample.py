"""Fingerprint positions are exact integers: float32 linspace indexed past the end of tensors
over 2**24 values (SmolLM2's embedding) and drifted before that."""

from __future__ import annotations

import torch
from torch import nn

from taskexpert.tensor_sample import legacy_float_indices, spaced_indices

BIG = 49152 * 576  # SmolLM2's embedding: float32 linspace's last position rounds to BIG


def test_positions_are_exact_and_in_range():
    assert torch.linspace(0, BIG - 1, 64).long()[-1].item() >= BIG  # the bug being fixed
    index = spaced_indices(BIG, 64)
    assert index.dtype == torch.int64 and index[0] == 0 and index[-1] == BIG - 1
    assert index.tolist() == [i * (BIG - 1) // 63 for i in range(64)]
    assert spaced_indices(1, 4).tolist() == [0, 0, 0, 0]
    assert spaced_indices(10, 1).tolist() == [0]
    assert legacy_float_indices(BIG, 64)[-1] == BIG - 1  # clamped


class _Vocab:
    def get_vocab(self):
        return {"a": 0}

    def __len__(self):
        return 1


def test_score_store_fingerprint_of_a_big_tensor():
    from taskexpert.experts.score_store import base_fingerprint

    model = nn.Module()
    model.embed = nn.Parameter(torch.zeros(BIG), requires_grad=False)
    first = base_fingerprint(model, _Vocab())
    with torch.no_grad():
        model.embed[-1] = 1.0  # the last value is sampled
    assert base_fingerprint(model, _Vocab()) != first


def test_mixture_fingerprint_of_a_big_layer_and_of_an_old_checkpoint():
    from taskexpert.errors import InputError
    from taskexpert.moe.model import base_fingerprint, check_fingerprint

    model = nn.Module()
    model.proj = nn.Linear(4099, 4097, bias=False)  # 16.79M weights > 2**24
    with torch.no_grad():
        model.proj.weight.copy_(torch.arange(model.proj.weight.numel()).reshape(4097, 4099))
    prints = base_fingerprint(model, ["proj"])
    assert prints["proj"][-1] == float(4097 * 4099 - 1)

    class Config:
        base_model_name = "tiny"

    config = Config()
    config.base_fingerprint = base_fingerprint(model, ["proj"], legacy=True)
    check_fingerprint(model, config)  # recorded by an earlier version: still recognised
    config.base_fingerprint = prints
    check_fingerprint(model, config)
    with torch.no_grad():
        model.proj.weight.mul_(-1)
    import pytest

    with pytest.raises(InputError, match="built on another base model"):
        check_fingerprint(model, config)
