"""Folding a mixture into one PEFT LoRA: exact where routing is constant, the measured
difference otherwise, and nothing the fold would drop."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel

from taskexpert.bank import load_adapter
from taskexpert.errors import InputError, TaskexpertError
from taskexpert.lm import collate, encode_pair
from taskexpert.moe import MoeConfig, attach_mixture, fixed_gates, mixture_layers
from taskexpert.moe.fold import (
    gates_from_routing,
    logit_difference,
    write_stacked_lora,
)
from taskexpert.moe.routing import RoutingReport, measure_routing
from taskexpert.records import Record

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RECORDS = [
    Record(id=str(i), instruction="Sum these. " * (1 + i % 2), output=f"So {i * 3}.")
    for i in range(4)
]
EXACT = 1e-4  # max |logit difference| of an exact fold, float32


def _mixture(tiny_llama, make_experts, top_k, zero_router):
    experts = make_experts([2, 4, 3])
    moe = attach_mixture(copy.deepcopy(tiny_llama), experts, MoeConfig(top_k=top_k))
    torch.manual_seed(5)
    with torch.no_grad():
        for layer in mixture_layers(moe).values():
            if zero_router:
                layer.router.weight.zero_()
            else:
                layer.router.weight.normal_(std=2.0)
    return moe.eval()


def _batches(tokenizer):
    pairs = [encode_pair(tokenizer, r.instruction, r.output) for r in RECORDS]
    return [collate(pairs, tokenizer.pad_token_id or 0)]


def _fold(moe, tiny_llama, tokenizer, tmp_path, min_share=0.05):
    report = measure_routing(moe, tokenizer, RECORDS)
    gates = gates_from_routing(report, moe, min_share=min_share)
    write_stacked_lora(moe, gates, tmp_path)
    folded = PeftModel.from_pretrained(copy.deepcopy(tiny_llama), tmp_path).eval()
    return report, gates, folded


@pytest.mark.parametrize(("top_k", "why"), [(1, "collapsed"), (3, "uniform")])
def test_fold_of_constant_routing_reproduces_the_mixture(
    tiny_llama, make_experts, char_tokenizer, tmp_path, top_k, why
):
    # zero routers: top-1 sends every token to one expert, top-3 gives each expert 1/3
    moe = _mixture(tiny_llama, make_experts, top_k, zero_router=True)
    report, gates, folded = _fold(moe, tiny_llama, char_tokenizer, tmp_path)
    assert report.collapsed == (why == "collapsed")
    diff = logit_difference(moe, folded, _batches(char_tokenizer))
    assert diff["max_abs"] < EXACT, diff
    assert diff["tokens"] > 0
    ranks = load_adapter(tmp_path).ranks  # a valid PEFT LoRA for taskexpert's bank, too
    if why == "uniform":
        assert ranks == {2 + 4 + 3}  # every expert stacked
    else:
        assert len(ranks) == 1 and next(iter(ranks)) in (2, 4, 3)  # the one dominant expert


def test_fold_of_a_routed_mixture_reports_the_difference(
    tiny_llama, make_experts, char_tokenizer, tmp_path
):
    moe = _mixture(tiny_llama, make_experts, 2, zero_router=False)
    report, gates, folded = _fold(moe, tiny_llama, char_tokenizer, tmp_path, min_share=0.0)
    assert not report.collapsed
    diff = logit_difference(moe, folded, _batches(char_tokenizer))
    assert diff["max_abs"] > 1e-3  # routing replaced by constants: not the same model
    assert diff["mean_abs"] <= diff["max_abs"]
    # ... but the fold itself is exact: it equals the mixture under the same constant gates
    # (one set of gates for every layer here, as fixed_gates takes)
    same = {layer: report.usage[0] for layer in gates}
    write_stacked_lora(moe, same, tmp_path / "same")
    folded_same = PeftModel.from_pretrained(copy.deepcopy(tiny_llama), tmp_path / "same").eval()
    with fixed_gates(moe, report.usage[0]):
        assert logit_difference(moe, folded_same, _batches(char_tokenizer))["max_abs"] < EXACT


def test_gates_drop_small_shares_and_renormalise(tiny_llama, make_experts):
    moe = _mixture(tiny_llama, make_experts, 2, zero_router=False)
    layers = list(mixture_layers(moe))
    report = RoutingReport(
        ["expert0", "expert1", "expert2"], layers, [[0.93, 0.05, 0.02]] * len(layers), [], 10, 2
    )
    gates = gates_from_routing(report, moe, min_share=0.05)
    assert gates[layers[0]] == pytest.approx([0.93 / 0.98, 0.05 / 0.98, 0.0], abs=1e-12)
    assert gates_from_routing(report, moe, min_share=0.99)[layers[0]] == [1.0, 0.0, 0.0]
    renamed = RoutingReport(["a", "b", "c"], layers, report.usage, [], 10, 2)
    with pytest.raises(InputError, match="not the mixture's"):
        gates_from_routing(renamed, moe)
    with pytest.raises(InputError, match="no row for layer"):
        gates_from_routing(RoutingReport(report.experts, layers[:1], report.usage[:1], [], 1, 2),
                           moe)  # fmt: skip


def test_trainable_parameters_outside_the_experts_refuse_the_fold(
    tiny_llama, make_experts, tmp_path
):
    moe = _mixture(tiny_llama, make_experts, 2, zero_router=False)
    moe.lm_head.weight.requires_grad_(True)
    gates = dict.fromkeys(mixture_layers(moe), [1.0, 0.0, 0.0])
    with pytest.raises(TaskexpertError, match="lm_head.weight.*refused"):
        write_stacked_lora(moe, gates, tmp_path)


@pytest.mark.parametrize("top_k", [1, 2])
def test_the_fold_carries_the_shared_expert(
    tiny_llama, make_experts, char_tokenizer, tmp_path, top_k
):
    """The shared expert is always on, so the fold stacks it at gate 1: exact under collapsed
    routing, and exactly the mixture under the fold's constant gates otherwise."""
    experts = make_experts([2, 4, 3])
    config = MoeConfig(top_k=top_k, shared_rank=2)
    moe = attach_mixture(copy.deepcopy(tiny_llama), experts, config)
    torch.manual_seed(5)
    with torch.no_grad():
        for layer in mixture_layers(moe).values():
            layer.router.weight.zero_()  # top-1: one expert everywhere
            layer.shared.lora_B.normal_(std=0.5)
    moe.eval()
    report, gates, folded = _fold(moe, tiny_llama, char_tokenizer, tmp_path / "fold")
    expert_ranks = {r for r in load_adapter(tmp_path / "fold").ranks}
    if top_k == 1:
        assert diff_max(moe, folded, char_tokenizer) < EXACT
        assert len(expert_ranks) == 1 and next(iter(expert_ranks)) - 2 in (2, 4, 3)
    else:  # routed: the fold is exact under its own constant gates
        same = {layer: report.usage[0] for layer in gates}
        write_stacked_lora(moe, same, tmp_path / "same")
        folded = PeftModel.from_pretrained(copy.deepcopy(tiny_llama), tmp_path / "same").eval()
        with fixed_gates(moe, report.usage[0]):
            assert diff_max(moe, folded, char_tokenizer) < EXACT
    # without the shared expert's block the fold would be another model
    with torch.no_grad():
        for layer in mixture_layers(moe).values():
            layer.shared.lora_B.zero_()
    assert diff_max(moe, folded, char_tokenizer) > 1e-3


def diff_max(moe, folded, tokenizer):
    return logit_difference(moe, folded, _batches(tokenizer))["max_abs"]
