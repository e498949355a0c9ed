import pytest
import torch

from taskexpert.testbed.model import (
    ModelSpec,
    build_attention,
    load_built_base,
    make_base_model,
    parameter_count,
)


def test_the_build_trains_with_eager_attention_on_cpu_and_sdpa_on_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert build_attention() == "eager"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert build_attention() == "sdpa"


def test_eager_and_sdpa_compute_the_same_model(micro_testbed):
    _, tokenizer = micro_testbed.load_base()
    spec = ModelSpec(hidden=32, layers=1, heads=2)
    eager = make_base_model(spec, tokenizer, seed=3, attention="eager").eval()
    sdpa = make_base_model(spec, tokenizer, seed=3, attention="sdpa").eval()
    assert eager.config._attn_implementation == "eager"
    assert sdpa.config._attn_implementation == "sdpa"
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(eager(ids).logits, sdpa(ids).logits, atol=1e-5, rtol=1e-4)
    assert parameter_count(eager) == parameter_count(sdpa)


def test_the_built_base_loads_with_the_builds_attention(micro_testbed):
    model, tokenizer = load_built_base(micro_testbed.root / "base")
    assert model.config._attn_implementation == build_attention()
    assert not model.training
    assert tokenizer.pad_token_id is not None


def test_heads_must_divide_the_hidden_size(micro_testbed):
    _, tokenizer = micro_testbed.load_base()
    with pytest.raises(ValueError, match="not divisible"):
        make_base_model(ModelSpec(hidden=30, heads=4), tokenizer)
