import pytest
import torch

from taskexpert.errors import InputError
from taskexpert.lm import mean_nll
from taskexpert.moe import (
    MoeConfig,
    assign_records_to_experts,
    attach_mixture,
    expert_mean_inputs,
    init_routers_from_kshot,
    mixture_config,
    mixture_layers,
    only_expert,
    set_routers_from_means,
)
from taskexpert.prompts import format_prompt
from taskexpert.records import Record

RECORDS = [
    Record(id=str(i), instruction=f"Add {i} and {i + 1}.", output=f"The answer is {2 * i + 1}.")
    for i in range(6)
]


@pytest.fixture()
def moe(make_experts, tiny_llama):
    return attach_mixture(tiny_llama, make_experts([2, 4, 2]), MoeConfig(top_k=2))


def test_rows_point_from_the_centre_to_each_expert_mean_and_ignore_the_centre(moe):
    torch.manual_seed(0)
    means = {}
    for module, layer in mixture_layers(moe).items():
        common = torch.randn(layer.base_layer.in_features) * 5
        means[module] = common + torch.eye(3, layer.base_layer.in_features)
    set_routers_from_means(moe, means, temperature=4.0)
    for module, layer in mixture_layers(moe).items():
        rows = layer.router.weight
        centre = means[module].mean(0)
        centred = means[module] - centre
        assert torch.allclose(rows @ centre, torch.zeros(3), atol=1e-4)  # blind to the centre
        projected = centred - torch.outer(centred @ centre, centre) / centre.dot(centre)
        expected = projected / projected.norm(dim=1, keepdim=True)
        scale = 4.0 / means[module].norm(dim=1).mean()
        assert torch.allclose(rows, expected * scale, atol=1e-6)
        # A token at expert e's mean is routed to expert e first.
        assert (means[module] @ rows.T).argmax(dim=1).tolist() == [0, 1, 2]


def test_examples_per_expert_set_routers_and_experts_without_examples_get_zero(moe, char_tokenizer):
    before = {m: layer.router.weight.clone() for m, layer in mixture_layers(moe).items()}
    counts = init_routers_from_kshot(
        moe, char_tokenizer, {"expert0": RECORDS[:3], "expert2": ["free text, no record"]}
    )
    assert counts == {"expert0": 3, "expert1": 0, "expert2": 1}
    assert mixture_config(moe).router_init == "kshot"
    for module, layer in mixture_layers(moe).items():
        rows = layer.router.weight
        assert torch.isfinite(rows).all() and not torch.equal(rows, before[module])
        assert torch.equal(rows[1], torch.zeros_like(rows[1]))
        assert rows[0].norm() > 0 and rows[2].norm() > 0


def test_mean_inputs_ignore_padding(moe, char_tokenizer):
    short, long = (
        RECORDS[0],
        Record(id="x", instruction="A much longer instruction " * 3, output="ok"),
    )
    together, _ = expert_mean_inputs(moe, char_tokenizer, {"expert0": [short, long]}, batch_size=2)
    apart, _ = expert_mean_inputs(moe, char_tokenizer, {"expert0": [short, long]}, batch_size=1)
    for module in together:
        assert torch.allclose(together[module][0], apart[module][0], atol=1e-5)
        assert torch.isnan(together[module][1]).all()


def test_kshot_records_go_to_the_expert_that_fits_them_best(moe, char_tokenizer):
    prompts = [format_prompt(r, char_tokenizer) for r in RECORDS]
    targets = [r.output for r in RECORDS]
    losses = []
    for name in mixture_config(moe).expert_names:
        with only_expert(moe, name):
            losses.append(mean_nll(moe, char_tokenizer, prompts, targets))
    best = torch.tensor(losses).argmin(0).tolist()
    groups = assign_records_to_experts(moe, char_tokenizer, RECORDS)
    for e, name in enumerate(mixture_config(moe).expert_names):
        assert [r.id for r in groups[name]] == [r.id for r, b in zip(RECORDS, best) if b == e]
    counts = init_routers_from_kshot(moe, char_tokenizer, RECORDS)
    assert sum(counts.values()) == len(RECORDS)


def test_bad_examples_are_refused(moe, char_tokenizer):
    with pytest.raises(InputError, match="no expert named 'ghost'"):
        init_routers_from_kshot(moe, char_tokenizer, {"ghost": RECORDS})
    with pytest.raises(InputError, match="no examples for any expert"):
        init_routers_from_kshot(moe, char_tokenizer, {"expert0": []})
    with pytest.raises(InputError, match="no K-shot records"):
        init_routers_from_kshot(moe, char_tokenizer, [])
