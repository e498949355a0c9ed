import pytest
import torch
from expert_helpers import memory_adapter

from taskexpert.experts.multi_lora import MultiLoraLinear, MultiLoraSwitcher, supports


def test_each_row_block_gets_its_own_adapter_update():
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 5)
    layer = MultiLoraLinear(base)
    a1, b1 = torch.randn(2, 6), torch.randn(5, 2)  # rank 2
    a3, b3 = torch.randn(4, 6), torch.randn(5, 4)  # rank 4: slot 1 is zero-padded
    layer.load([(a1, b1, 0.5), (a3, b3, 2.0), None])
    x = torch.randn(6, 3, 6)  # 3 slots x 2 rows, 3 positions
    out = layer(x)
    expected = [base(x[0:2]) + 0.5 * x[0:2] @ a1.T @ b1.T]
    expected += [base(x[2:4]) + 2.0 * x[2:4] @ a3.T @ b3.T, base(x[4:6])]
    assert torch.allclose(out, torch.cat(expected), atol=1e-5)
    assert torch.equal(out[4:6], base(x[4:6]))  # the None slot adds exactly nothing
    with pytest.raises(ValueError, match="does not split"):
        layer(torch.randn(4, 1, 6))
    layer.rows = torch.tensor([2, 0, 1])  # rows in any order, one per slot named
    picked = x[[4, 0, 2]]
    assert torch.allclose(layer(picked), out[[4, 0, 2]], atol=1e-5)


def test_switcher_puts_the_base_layers_back(tiny_llama):
    name = "model.layers.0.self_attn.q_proj"
    layer = tiny_llama.get_submodule(name)
    adapter = memory_adapter("a", {name: (2, layer.in_features, layer.out_features)})
    assert supports(tiny_llama, [adapter])
    assert not supports(tiny_llama, [memory_adapter("b", {"model.embed_tokens": (2, 3, 4)})])
    with MultiLoraSwitcher(tiny_llama) as switcher:
        model = switcher.activate([adapter, None])
        assert isinstance(model.get_submodule(name), MultiLoraLinear)
    assert tiny_llama.get_submodule(name) is layer
