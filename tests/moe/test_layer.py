import math

import pytest
import torch
from torch import nn

from taskexpert.moe import layer as layer_module
from taskexpert.moe.layer import MixtureOfLoraLinear

RANKS = [2, 4, 3, 8]


def make_layer(top_k, ranks=RANKS, coef=0.0, seed=0):
    torch.manual_seed(seed)
    base = nn.Linear(16, 24).requires_grad_(False)
    experts = [(torch.randn(r, 16), torch.randn(24, r), 0.5 + i) for i, r in enumerate(ranks)]
    layer = MixtureOfLoraLinear(base, experts, top_k=top_k, load_balancing_coef=coef)
    nn.init.normal_(layer.router.weight, std=1.0)
    return layer


def dense_reference(layer, x):
    """Every expert on every token, then masked to the top-k with renormalised softmax gates."""
    flat = x.reshape(-1, x.shape[-1])
    probs = torch.softmax(flat @ layer.router.weight.T, dim=-1)
    top = probs.topk(layer.top_k, dim=-1).indices
    mask = torch.zeros_like(probs).scatter(1, top, 1.0)
    gates = probs * mask / (probs * mask).sum(dim=-1, keepdim=True)
    out = layer.base_layer(flat)
    for e in range(layer.num_experts):
        delta = flat @ layer.lora_A[e].T @ layer.lora_B[e].T * layer.scaling[e]
        out = out + gates[:, e : e + 1] * delta
    return out.reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_matches_dense_reference(top_k):
    layer = make_layer(top_k)
    x = torch.randn(3, 7, 16)
    assert torch.allclose(layer(x), dense_reference(layer, x), atol=1e-5)


def test_gradients_match_dense_reference():
    layer = make_layer(top_k=2)
    x = torch.randn(2, 5, 16, requires_grad=True)
    params = [layer.router.weight, *layer.lora_A, *layer.lora_B, x]
    grads = torch.autograd.grad(layer(x).pow(2).sum(), params)
    expected = torch.autograd.grad(dense_reference(layer, x).pow(2).sum(), params)
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, atol=1e-4)


@pytest.fixture(params=["dense", "grouped"])
def path(request, monkeypatch):
    """Run a test through each way of applying B (moe/layer.py docstring)."""
    if request.param == "grouped":
        monkeypatch.setattr(layer_module, "GROUPED_MIN_TOKENS", 0)
    return request.param


def on_path(layer, path):
    layer._groups = path == "grouped"
    return layer


def assert_matches(got, want):
    """float32, only the summation order differs: 1e-5 relative, 1e-6 of the output scale."""
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))


@pytest.mark.parametrize("top_k", [1, 2, 4])
@pytest.mark.parametrize("train", [True, False])
def test_both_paths_match_the_formula_with_gradients(path, top_k, train):
    """Outputs and gradients (router, every A and B, input) equal the docstring's formula
    computed expert by expert, in train and eval mode."""
    layer = on_path(make_layer(top_k), path).train(train)
    x = torch.randn(3, 7, 16, requires_grad=True)
    params = [layer.router.weight, *layer.lora_A, *layer.lora_B, x]
    got = layer(x)
    assert_matches(got, dense_reference(layer, x))
    grads = torch.autograd.grad(got.pow(2).sum(), params)
    expected = torch.autograd.grad(dense_reference(layer, x).pow(2).sum(), params)
    # relative to the gradients' scale (float32 sums of values up to ~1e5): under top-1 the
    # router gradient is exactly 0 here and noise of ~1e-8 of that scale in the reference
    scale = max(float(want.abs().max()) for want in expected)
    for g, want in zip(grads, expected):
        torch.testing.assert_close(g, want, atol=1e-6 * scale, rtol=1e-4)


def test_cached_eval_path_matches_and_follows_weight_changes(path):
    layer = on_path(make_layer(top_k=2), path).eval()
    x = torch.randn(4, 9, 16)
    with torch.no_grad():
        assert_matches(layer(x), dense_reference(layer, x))
        cached = layer._cache
        layer(x)
        assert layer._cache is cached  # nothing rebuilt per step
        layer.lora_B[1].mul_(3.0)  # in place, as an optimizer step or copy_ do
        layer.router.weight.add_(0.5)
        assert_matches(layer(x), dense_reference(layer, x))
        assert layer._cache is not cached
        state = {k: v * 2 for k, v in layer.state_dict().items() if "base_layer" not in k}
        layer.load_state_dict(state, strict=False, assign=True)  # replaces the parameters
        assert_matches(layer(x), dense_reference(layer, x))
        layer.double()
        out = layer(x.double())
        assert out.dtype == torch.float64
        assert_matches(out, dense_reference(layer, x.double()))
    cached = layer._cache
    layer.train()
    assert layer._cache is None and cached is not None


def test_no_cache_while_gradients_can_reach_the_parameters():
    layer = make_layer(top_k=2).eval()
    layer(torch.randn(2, 3, 16)).sum().backward()
    assert layer._cache is None and layer.lora_A[0].grad is not None
    with torch.inference_mode():
        layer(torch.randn(2, 3, 16))
    assert layer._cache is not None
    layer(torch.randn(2, 3, 16)).sum().backward()  # the cache did not leak into autograd
    assert layer.lora_B[0].grad.abs().sum() > 0


def test_state_dict_layout_is_unchanged():
    layer = make_layer(top_k=2)
    keys = {k for k in layer.state_dict() if not k.startswith("base_layer.")}
    assert keys == {"router.weight"} | {f"lora_{p}.{e}" for p in "AB" for e in range(4)}


def test_grouped_path_runs_each_expert_only_on_its_tokens(monkeypatch):
    """B of each expert multiplies only the rows routed to it: k rows per token, not N."""
    monkeypatch.setattr(layer_module, "GROUPED_MIN_TOKENS", 0)
    layer = on_path(make_layer(top_k=2), "grouped").eval()
    x = torch.randn(5, 6, 16)
    chosen = torch.softmax(x.reshape(-1, 16) @ layer.router.weight.T, -1).topk(2).indices
    expected = torch.bincount(chosen.reshape(-1), minlength=4)
    rows_seen = []
    original = torch.Tensor.__matmul__

    def counting(a, b):
        rows_seen.append((a.shape[0], b.shape[0]))
        return original(a, b)

    monkeypatch.setattr(torch.Tensor, "__matmul__", counting)
    with torch.no_grad():
        layer(x)
    assert sum(rows for rows, _ in rows_seen) == 30 * 2
    assert sorted(rows_seen) == sorted((int(n), RANKS[e]) for e, n in enumerate(expected) if n > 0)


def test_path_choice_follows_the_skipped_rank_columns():
    assert not make_layer(top_k=2, ranks=[8] * 4)._groups  # 16 skipped columns: dense
    assert make_layer(top_k=2, ranks=[16] * 8)._groups  # 96: grouped for large batches
    assert not make_layer(top_k=4, ranks=[64] * 4)._groups  # every expert chosen


def test_statistics_and_aux_loss():
    layer = make_layer(top_k=2, coef=0.1)
    x = torch.randn(4, 5, 16)
    layer(x)
    probs = torch.softmax(x.reshape(-1, 16) @ layer.router.weight.T, -1)
    load = torch.bincount(probs.topk(2).indices.reshape(-1), minlength=4).float() / 40
    assert torch.allclose(layer.last_load, load)
    entropy = -(probs * probs.log()).sum(-1).mean()
    assert torch.allclose(layer.last_entropy, entropy, atol=1e-6)
    assert 0 < float(layer.last_entropy) < math.log(4)
    expected_aux = 0.1 * 4 * (load * probs.mean(0)).sum()
    assert torch.allclose(layer.last_aux_loss, expected_aux, atol=1e-6)
    layer.last_aux_loss.backward()
    assert layer.router.weight.grad.abs().sum() > 0


def test_statistics_over_the_tokens_a_mask_keeps():
    layer = make_layer(top_k=2)
    x = torch.randn(2, 5, 16)
    layer(x)
    attention = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    keep = layer.token_mask(attention)
    assert keep.tolist() == [True] * 3 + [False] * 2 + [True] * 5
    stats = layer.routing_stats(keep)
    real = x.reshape(-1, 16)[keep]
    probs = torch.softmax(real @ layer.router.weight.T, -1)
    load = torch.bincount(probs.topk(2).indices.reshape(-1), minlength=4).float() / 16
    assert stats.tokens == 8 and torch.allclose(stats.load, load)
    assert torch.allclose(stats.entropy, -(probs * probs.log()).sum(-1).mean(), atol=1e-6)
    assert layer.routing_stats().tokens == 10  # no mask: every token
    # Decoding with a cache: the mask covers past tokens too, the last columns are routed.
    layer(torch.randn(2, 1, 16))
    assert layer.token_mask(attention).tolist() == [False, True]
    assert layer.token_mask(torch.ones(3, 5)) is None  # another batch: does not fit
    assert layer.routing_stats(torch.tensor([False, False])) is None


def test_aux_loss_not_computed_when_off():
    layer = make_layer(top_k=2, coef=0.0)
    layer(torch.randn(2, 3, 16))
    assert layer.last_aux_loss is None
    assert layer.last_load is not None


def test_fixed_gates_bypass_the_router_and_skip_zero_experts():
    layer = make_layer(top_k=2)
    x = torch.randn(2, 3, 16)
    layer.fixed_gates = torch.tensor([0.0, 1.0, 0.0, 0.0])
    expected = layer.base_layer(x) + layer.expert_delta(1, x)
    torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)
    assert layer.last_load is None


def test_experts_must_fit_the_base_layer():
    base = nn.Linear(16, 24)
    with pytest.raises(ValueError, match="do not fit"):
        MixtureOfLoraLinear(base, [(torch.randn(2, 8), torch.randn(24, 2), 1.0)], top_k=1)
    with pytest.raises(ValueError, match="top_k"):
        MixtureOfLoraLinear(base, [(torch.randn(2, 16), torch.randn(24, 2), 1.0)], top_k=2)


def test_aux_loss_leaves_padding_out():
    layer = make_layer(top_k=2, coef=0.1)
    x = torch.randn(2, 5, 16)
    layer.forward_mask.mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    layer(x)
    real = x.reshape(-1, 16)[layer.token_mask(layer.forward_mask.mask)]
    probs = torch.softmax(real @ layer.router.weight.T, -1)
    load = torch.bincount(probs.topk(2).indices.reshape(-1), minlength=4).float() / 16
    assert torch.allclose(layer.last_aux_loss, 0.1 * 4 * (load * probs.mean(0)).sum(), atol=1e-6)
    layer.forward_mask.mask = torch.zeros(2, 5)
    layer(x)
    assert layer.last_aux_loss is None  # nothing real to balance


# --- the shared expert -----------------------------------------------------------------------

SHARED_RANK = 3


def make_shared_layer(top_k, seed=0, shared_scaling=2.0):
    """make_layer's mixture plus a shared expert with PEFT's init (B_s = 0)."""
    layer = make_layer(top_k, seed=seed)
    A_s = torch.empty(SHARED_RANK, 16).uniform_(-0.25, 0.25)
    shared = (A_s, torch.zeros(24, SHARED_RANK), shared_scaling)
    experts = [(layer.lora_A[e], layer.lora_B[e], s) for e, s in enumerate(layer.scaling)]
    with_shared = MixtureOfLoraLinear(layer.base_layer, experts, top_k=top_k, shared=shared)
    with torch.no_grad():
        with_shared.router.weight.copy_(layer.router.weight)
    return layer, with_shared


def shared_delta(layer, x):
    """s_s * B_s A_s x, expert by expert as the docstring says."""
    shared = layer.shared
    return x @ shared.lora_A.T @ shared.lora_B.T * shared.scaling


@pytest.mark.parametrize("top_k", [1, 2, 4])
@pytest.mark.parametrize("mode", ["train", "eval", "fixed"])
def test_a_fresh_shared_expert_changes_nothing_then_adds_exactly_its_lora(path, top_k, mode):
    """B_s = 0: bit-identical to the mixture without it; after B_s changes in place (the eval
    path's cache must not hide that), the output moves by exactly s_s B_s A_s x."""
    plain, layer = make_shared_layer(top_k)
    plain, layer = on_path(plain, path), on_path(layer, path)
    plain.train(mode == "train"), layer.train(mode == "train")
    if mode == "fixed":
        plain.fixed_gates = layer.fixed_gates = torch.tensor([0.1, 0.2, 0.3, 0.4])
    x = torch.randn(3, 7, 16)
    with torch.no_grad():
        assert torch.equal(layer(x), plain(x))
        layer.shared.lora_B.normal_()
        got = layer(x) - plain(x)
    assert float(got.abs().max()) > 0.1
    # float32, one extra addition of the delta into the output: 1e-5 of the output's scale
    scale = float(plain(x).abs().max())
    torch.testing.assert_close(got, shared_delta(layer, x), rtol=0, atol=1e-5 * scale)


def test_gradients_reach_the_shared_expert(path):
    """Both factors get the formula's gradients; at init (B_s = 0) B_s's is already non-zero,
    so the shared expert trains from the first step."""
    _, layer = make_shared_layer(top_k=2)
    layer = on_path(layer, path).train()
    x = torch.randn(3, 7, 16)
    layer(x).pow(2).sum().backward()
    assert layer.shared.lora_B.grad.abs().sum() > 0
    assert layer.shared.lora_A.grad.abs().sum() == 0  # B_s = 0: nothing to pass back yet
    with torch.no_grad():
        layer.shared.lora_B.normal_()
    params = [layer.router.weight, *layer.lora_A, *layer.lora_B]
    params += [layer.shared.lora_A, layer.shared.lora_B]
    got = torch.autograd.grad(layer(x).pow(2).sum(), params)
    want = torch.autograd.grad(
        (dense_reference(layer, x) + shared_delta(layer, x)).pow(2).sum(), params
    )
    for g, w in zip(got, want):
        assert_matches(g, w)
    assert got[-2].abs().sum() > 0 and got[-1].abs().sum() > 0


def test_shared_expert_state_dict_keys_and_shape_errors():
    _, layer = make_shared_layer(top_k=2)
    keys = {k for k in layer.state_dict() if not k.startswith("base_layer.")}
    assert keys - {"router.weight"} - {f"lora_{p}.{e}" for p in "AB" for e in range(4)} == {
        "shared.lora_A",
        "shared.lora_B",
    }
    assert "shared_rank=3" in repr(layer)
    base = nn.Linear(16, 24)
    experts = [(torch.randn(2, 16), torch.randn(24, 2), 1.0)]
    with pytest.raises(ValueError, match="shared expert.*do not fit"):
        MixtureOfLoraLinear(
            base, experts, top_k=1, shared=(torch.randn(3, 8), torch.zeros(24, 3), 1)
        )
    with pytest.raises(ValueError, match="shared expert.*not the factors of one LoRA"):
        MixtureOfLoraLinear(
            base, experts, top_k=1, shared=(torch.randn(3, 16), torch.zeros(24, 2), 1)
        )
