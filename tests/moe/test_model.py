import copy

import pytest
import torch

from taskexpert.bank import load_adapter
from taskexpert.errors import InputError
from taskexpert.moe import (
    MixtureOfLoraLinear,
    MoeConfig,
    attach_mixture,
    fixed_gates,
    freeze_base,
    mixture_aux_loss,
    mixture_config,
    mixture_layers,
    only_expert,
    router_stats,
)

from .conftest import save_random_lora, variant_of


def test_one_expert_top1_equals_the_peft_lora(tiny_llama, tmp_path, input_ids):
    peft_model = save_random_lora(
        tiny_llama, tmp_path / "a", r=4, lora_alpha=12, target_modules=["q_proj", "v_proj"]
    )
    moe = attach_mixture(
        copy.deepcopy(tiny_llama), [load_adapter(tmp_path / "a")], MoeConfig(top_k=1)
    )
    with torch.no_grad():
        expected = peft_model(input_ids=input_ids).logits
        got = moe(input_ids=input_ids).logits
    # the same sums in the same order; 1e-6 leaves room for another BLAS's kernel choice
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_experts_of_different_ranks_are_recorded_and_each_is_its_own_lora(
    tiny_llama, tmp_path, input_ids
):
    adapters = []
    peft_models = []
    for i, rank in enumerate([2, 8, 4]):
        peft_models.append(
            save_random_lora(
                tiny_llama,
                tmp_path / f"e{i}",
                seed=i,
                r=rank,
                lora_alpha=16,
                target_modules=["q_proj", "v_proj"],
                rank_pattern={"model.layers.1.self_attn.v_proj": 1} if i == 1 else {},
            )
        )
        adapters.append(load_adapter(tmp_path / f"e{i}"))
    moe = attach_mixture(copy.deepcopy(tiny_llama), adapters)
    config = mixture_config(moe)
    assert [(e.rank, e.scaling) for e in config.experts] == [(2, 8.0), (8, 2.0), (4, 4.0)]
    assert config.experts[1].rank_pattern == {"model.layers.1.self_attn.v_proj": 1}
    assert config.experts[1].scaling_of("model.layers.1.self_attn.v_proj") == 16.0
    assert config.target_modules == ["q_proj", "v_proj"] and len(config.modules) == 4
    with torch.no_grad():
        routed = moe(input_ids=input_ids).logits
        assert torch.isfinite(routed).all()
        for adapter, peft_model in zip(adapters, peft_models):
            with only_expert(moe, adapter.name):
                alone = moe(input_ids=input_ids).logits
            assert torch.allclose(alone, peft_model(input_ids=input_ids).logits, atol=1e-5)


def test_gradients_reach_experts_and_routers_only(make_experts, tiny_llama, input_ids):
    moe = attach_mixture(tiny_llama, make_experts([2, 4, 4, 8]), MoeConfig(top_k=2))
    moe.train()
    moe(input_ids=input_ids, labels=input_ids).loss.backward()
    mixture_params = set()
    for layer in mixture_layers(moe).values():
        params = [layer.router.weight, *layer.lora_A, *layer.lora_B]
        mixture_params |= {id(p) for p in params}
        assert layer.router.weight.grad.abs().sum() > 0
        assert all(p.grad is not None for p in params)
    for name, param in moe.named_parameters():
        if id(param) not in mixture_params:
            assert not param.requires_grad and param.grad is None, name
    assert freeze_base(moe) == sum(p.numel() for p in moe.parameters() if id(p) in mixture_params)


def test_router_stats_and_aux_loss(make_experts, tiny_llama, input_ids):
    moe = attach_mixture(tiny_llama, make_experts([2, 2, 2, 2]), MoeConfig(top_k=2))
    assert router_stats(moe)["layers"] == 0
    moe(input_ids=input_ids)
    stats = router_stats(moe)
    assert stats["layers"] == 4 and set(stats["load"]) == {f"expert{i}" for i in range(4)}
    assert sum(stats["load"].values()) == pytest.approx(1.0, rel=1e-6)
    assert 0 < stats["entropy"] <= stats["max_entropy"]
    assert mixture_aux_loss(moe) is None  # off by default: nothing is computed
    for layer in mixture_layers(moe).values():
        layer.load_balancing_coef = 0.01
    moe(input_ids=input_ids)
    aux = mixture_aux_loss(moe)
    assert aux.requires_grad and float(aux.detach()) > 0


def test_padding_does_not_change_the_router_stats(make_experts, tiny_llama, char_tokenizer):
    moe = attach_mixture(
        tiny_llama, make_experts([2, 2, 2, 2]), MoeConfig(top_k=2, load_balancing_coef=0.01)
    )
    texts = ["Route me to the right expert.", "2 + 2 = 4."]
    ids = [char_tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    def stats_with_padding(extra: int) -> dict:
        width = max(map(len, ids)) + extra  # right padding: real tokens never see it
        pad = char_tokenizer.pad_token_id
        batch = torch.tensor([row + [pad] * (width - len(row)) for row in ids])
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
        with torch.no_grad():
            moe(input_ids=batch, attention_mask=mask)
        return {**router_stats(moe), "aux": float(mixture_aux_loss(moe))}

    tight, padded = stats_with_padding(0), stats_with_padding(12)
    assert tight["tokens"] == padded["tokens"] == sum(map(len, ids))
    assert tight["padding_excluded"] and padded["padding_excluded"]
    assert padded["entropy"] == pytest.approx(tight["entropy"], abs=1e-6)
    assert padded["load"] == pytest.approx(tight["load"], abs=1e-6)
    assert padded["aux"] == pytest.approx(tight["aux"], abs=1e-7)  # the loss ignores padding
    with torch.no_grad():  # the same padded batch with its padding counted: other numbers
        moe(torch.tensor([row + [0] * (40 - len(row)) for row in ids]))
    unmasked = router_stats(moe)
    assert unmasked["tokens"] == 80 and not unmasked["padding_excluded"]
    assert unmasked["load"] != pytest.approx(tight["load"], abs=1e-3)


def test_fixed_uniform_gates_average_the_experts(make_experts, tiny_llama, input_ids):
    moe = attach_mixture(tiny_llama, make_experts([2, 4]), MoeConfig(top_k=1))
    layer = next(iter(mixture_layers(moe).values()))
    x = torch.randn(3, layer.base_layer.in_features)
    with fixed_gates(moe, "uniform"):
        got = layer(x)
    expected = layer.base_layer(x) + 0.5 * (layer.expert_delta(0, x) + layer.expert_delta(1, x))
    assert torch.allclose(got, expected, atol=1e-6)
    assert layer.fixed_gates is None  # restored


def test_experts_with_different_target_modules_are_refused(make_experts, tiny_llama, tmp_path):
    adapters = make_experts([2])
    save_random_lora(tiny_llama, tmp_path / "odd", r=2, target_modules=["q_proj", "k_proj"])
    odd = load_adapter(tmp_path / "odd")
    with pytest.raises(InputError, match="'odd' targets different modules") as info:
        attach_mixture(tiny_llama, [*adapters, odd])
    assert "odd" in str(info.value.path)
    assert not mixture_layers(tiny_llama)  # nothing half-attached


def test_experts_that_do_not_fit_the_base_are_refused(make_experts, tiny_llama, tmp_path):
    wide = variant_of(tiny_llama, hidden_size=64, intermediate_size=128)
    save_random_lora(wide, tmp_path / "wide", r=2, target_modules=["q_proj", "v_proj"])
    small = tiny_llama
    with pytest.raises(InputError, match=r"'wide', module model\.layers\.0\.self_attn\.q_proj"):
        attach_mixture(small, [*make_experts([2]), load_adapter(tmp_path / "wide")])
    assert not mixture_layers(small)


def test_bad_choices_are_refused(make_experts, tiny_llama):
    adapters = make_experts([2, 2])
    with pytest.raises(InputError, match="top_k=3 but only 2 experts"):
        attach_mixture(tiny_llama, adapters, MoeConfig(top_k=3))
    with pytest.raises(InputError, match="used twice"):
        attach_mixture(tiny_llama, [adapters[0], adapters[0]])
    with pytest.raises(InputError, match="at least one"):
        attach_mixture(tiny_llama, [])
    attach_mixture(tiny_llama, adapters)
    assert all(isinstance(m, MixtureOfLoraLinear) for m in mixture_layers(tiny_llama).values())
    with pytest.raises(InputError, match="already has a mixture"):
        attach_mixture(tiny_llama, adapters)


def test_a_fresh_shared_expert_starts_as_peft_does_and_changes_nothing(
    make_experts, tiny_llama, input_ids
):
    """A_s kaiming-uniform (|A_s| <= 1/sqrt(in)), B_s = 0, seeded; the logits equal the mixture
    without it bit for bit, and its factors train (the parameter count grows by r (in + out))."""
    experts = make_experts([2, 4])
    plain = attach_mixture(copy.deepcopy(tiny_llama), experts, MoeConfig(router_seed=1))
    shared = attach_mixture(
        copy.deepcopy(tiny_llama), experts, MoeConfig(router_seed=1, shared_rank=3)
    )
    assert mixture_config(shared).shared_alpha == 6.0  # recorded: twice the rank
    unused = MoeConfig(shared_alpha=4.0)  # without a shared expert its alpha is dropped
    assert (
        mixture_config(attach_mixture(copy.deepcopy(tiny_llama), experts, unused)).shared_alpha
        is None
    )
    assert all(layer.shared is None for layer in mixture_layers(plain).values())
    extra = 0
    for layer in mixture_layers(shared).values():
        A, B = layer.shared.lora_A, layer.shared.lora_B
        inp, out = layer.base_layer.in_features, layer.base_layer.out_features
        assert A.shape == (3, inp) and B.shape == (out, 3) and layer.shared.scaling == 2.0
        assert 0 < float(A.detach().abs().max()) <= 1 / inp**0.5 and not B.any()
        assert A.requires_grad and B.requires_grad
        extra += 3 * (inp + out)
    assert freeze_base(shared) == freeze_base(plain) + extra
    with torch.no_grad():
        assert torch.equal(shared(input_ids=input_ids).logits, plain(input_ids=input_ids).logits)
    again = attach_mixture(
        copy.deepcopy(tiny_llama), experts, MoeConfig(router_seed=1, shared_rank=3)
    )
    for name, layer in mixture_layers(again).items():
        assert torch.equal(layer.shared.lora_A, mixture_layers(shared)[name].shared.lora_A)


def test_a_mixture_evaluates_from_the_prompt_cache_as_in_separate_passes(
    make_experts, tiny_llama, char_tokenizer, monkeypatch
):
    """evaluate_model's one prompt pass (KV cache, explicit positions, rows leaving the batch)
    through routed layers with a shared expert: the texts and option scores of generate() and
    of one full forward pass per option."""
    from taskexpert.evaluate import evaluate_exact_match, evaluate_model, evaluate_multiple_choice
    from taskexpert.records import Record

    moe = attach_mixture(
        tiny_llama, make_experts([2, 4, 3]), MoeConfig(top_k=2, router_seed=1, shared_rank=2)
    ).eval()
    torch.manual_seed(2)
    with torch.no_grad():  # routers that route, and a shared expert that is not zero
        for name, param in moe.named_parameters():
            if "router" in name or "shared.lora_B" in name:
                torch.nn.init.normal_(param, std=0.5)
    records = [
        Record(id="a", instruction="Pick.\nA) 3\nB) 4", output="x", answer="B", choices=["3", "4"]),
        Record(id="b", instruction="Is it?", output="x", answer="yes", choices=["no", "yes", "z"]),
        Record(id="c", instruction="Sum 2 and 2.", output="The answer is 4.", answer="4"),
    ]
    settings = {"max_new_tokens": 6, "batch_size": 2}
    em = evaluate_exact_match(moe, char_tokenizer, records, **settings)
    mc = evaluate_multiple_choice(moe, char_tokenizer, records, batch_size=2)["predictions"]
    monkeypatch.setattr("taskexpert.evaluate.generate_greedy", None)  # the shared pass only
    result = evaluate_model(moe, char_tokenizer, records, **settings)["predictions"]
    assert [p["generated"] for p in result] == [p["generated"] for p in em["predictions"]]
    for got, expected in zip(result, mc):
        assert got["option_logprobs"] == pytest.approx(expected["option_logprobs"], abs=1e-4)
