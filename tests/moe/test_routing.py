"""Routing diagnostics: usage rows sum to 1, padding is left out, collapse and balance are
recognised, and routing.json reads back."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from taskexpert.errors import InputError
from taskexpert.moe import MoeConfig, attach_mixture, fixed_gates, mixture_layers
from taskexpert.moe.routing import RoutingReport, measure_routing
from taskexpert.records import Record

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RECORDS = [
    Record(id=str(i), instruction="Add numbers. " * (1 + i % 3), output=f"It is {i * 7}.")
    for i in range(6)
]


def _mixture(tiny_llama, make_experts, top_k, zero_router=False, ranks=(2, 4, 3)):
    experts = make_experts(list(ranks))
    moe = attach_mixture(copy.deepcopy(tiny_llama), experts, MoeConfig(top_k=top_k))
    with torch.no_grad():
        for layer in mixture_layers(moe).values():
            if zero_router:
                layer.router.weight.zero_()
            else:
                layer.router.weight.normal_(std=2.0)
    return moe.eval()


def test_usage_rows_sum_to_one_and_selection_to_k(tiny_llama, make_experts, char_tokenizer):
    moe = _mixture(tiny_llama, make_experts, top_k=2)
    report = measure_routing(moe, char_tokenizer, RECORDS, batch_size=4)
    assert report.layers == list(mixture_layers(moe))
    assert report.experts == ["expert0", "expert1", "expert2"]
    for row, chosen, entropy in zip(report.usage, report.selected, report.entropy):
        assert sum(row) == pytest.approx(1.0, abs=1e-6)
        assert sum(chosen) == pytest.approx(2.0, abs=1e-6)
        assert 0.0 <= entropy <= report.max_entropy + 1e-9
    assert report.max_entropy == pytest.approx(math.log(3), abs=1e-12)
    data = report.to_json()
    assert set(data) == {"experts", "layers", "usage", "entropy", "max_entropy", "collapsed",
                         "dominant_share", "warning", "tokens"}  # fmt: skip
    assert len(data["usage"]) == len(data["entropy"]) == len(data["dominant_share"])


def test_padding_is_left_out(tiny_llama, make_experts, char_tokenizer):
    moe = _mixture(tiny_llama, make_experts, top_k=2)
    batched = measure_routing(moe, char_tokenizer, RECORDS, batch_size=6)
    alone = measure_routing(moe, char_tokenizer, RECORDS, batch_size=1)  # no padding at all
    assert batched.tokens == alone.tokens
    for a, b in zip(batched.usage, alone.usage):
        assert a == pytest.approx(b, abs=1e-5)


def test_top1_usage_is_the_token_share(tiny_llama, make_experts, char_tokenizer):
    moe = _mixture(tiny_llama, make_experts, top_k=1)
    report = measure_routing(moe, char_tokenizer, RECORDS)
    for usage, selected in zip(report.usage, report.selected):
        assert usage == pytest.approx(selected, abs=1e-9)


def test_a_router_sending_everything_to_one_expert_is_collapsed(
    tiny_llama, make_experts, char_tokenizer
):
    # zero routers tie every expert; top-1 then breaks the tie the same way for every token
    moe = _mixture(tiny_llama, make_experts, top_k=1, zero_router=True)
    report = measure_routing(moe, char_tokenizer, RECORDS)
    assert all(share == pytest.approx(1.0, abs=1e-9) for share in report.dominant_share)
    assert all(entropy == pytest.approx(0.0, abs=1e-9) for entropy in report.entropy)
    assert report.collapsed
    assert "taskexpert export RUN_DIR --merge" in report.warning


def test_balanced_routing_is_not_collapsed(tiny_llama, make_experts, char_tokenizer):
    moe = _mixture(tiny_llama, make_experts, top_k=3, zero_router=True)  # dense, equal gates
    report = measure_routing(moe, char_tokenizer, RECORDS)
    for row, entropy in zip(report.usage, report.entropy):
        assert row == pytest.approx([1 / 3] * 3, abs=1e-6)
        assert entropy == pytest.approx(math.log(3), abs=1e-6)
    assert not report.collapsed and report.warning is None


def test_fixed_gates_count_as_the_routing(tiny_llama, make_experts, char_tokenizer):
    moe = _mixture(tiny_llama, make_experts, top_k=2)
    with fixed_gates(moe, [0.95, 0.05, 0.0]):
        report = measure_routing(moe, char_tokenizer, RECORDS)
    assert report.usage[0] == pytest.approx([0.95, 0.05, 0.0], abs=1e-6)  # float32 gates
    assert report.collapsed


def test_routing_json_reads_back_and_bad_reports_are_refused(
    tiny_llama, make_experts, char_tokenizer
):
    moe = _mixture(tiny_llama, make_experts, top_k=2)
    report = measure_routing(moe, char_tokenizer, RECORDS)
    again = RoutingReport.from_json(report.to_json())
    assert again.to_json() == report.to_json()
    with pytest.raises(InputError, match="not a routing report"):
        RoutingReport.from_json({"experts": []}, "routing.json")
    with pytest.raises(InputError, match="one row per layer"):
        RoutingReport.from_json({**report.to_json(), "layers": ["x"]})
    with pytest.raises(InputError, match="no records"):
        measure_routing(moe, char_tokenizer, [])
