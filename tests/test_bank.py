import pytest
import torch
from peft import LoraConfig, get_peft_model

from taskexpert.bank import load_adapter
from taskexpert.errors import InputError


def save_random_lora(model, path, seed=0, **config):
    """A PEFT LoRA with non-zero B (fresh LoRAs have B = 0), saved to `path`."""
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(**config))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    peft_model.save_pretrained(path)
    return peft_model


def test_factors_and_scaling_reproduce_peft_forward(tiny_llama, tmp_path):
    layer = tiny_llama.model.layers[1].self_attn.q_proj
    x = torch.randn(3, layer.in_features)
    base_out = layer(x)
    peft_model = save_random_lora(
        tiny_llama,
        tmp_path / "a",
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
        rank_pattern={"model.layers.1.self_attn.q_proj": 2},
        alpha_pattern={"model.layers.1.self_attn.q_proj": 3},
    )
    adapted = peft_model.base_model.model.model.layers[1].self_attn.q_proj(x)
    module = load_adapter(tmp_path / "a").modules["model.layers.1.self_attn.q_proj"]
    assert module.rank == 2 and module.scaling == pytest.approx(1.5)
    expected = base_out + x @ module.delta_weight().T
    assert torch.allclose(adapted, expected, atol=1e-5)


def test_pickle_refused_unless_allowed(tiny_llama, tmp_path):
    save_random_lora(tiny_llama, tmp_path / "a", r=2, target_modules=["q_proj"])
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    (tmp_path / "a" / "adapter_model.safetensors").unlink()
    torch.save(tensors, tmp_path / "a" / "adapter_model.bin")
    with pytest.raises(InputError, match="allow-pickle"):
        load_adapter(tmp_path / "a")
    assert load_adapter(tmp_path / "a", allow_pickle=True).ranks == {2}


def test_corrupt_and_missing_files_name_the_adapter(tiny_llama, tmp_path):
    save_random_lora(tiny_llama, tmp_path / "a", r=2, target_modules=["q_proj"])
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="corrupt safetensors") as info:
        load_adapter(tmp_path / "a")
    assert "adapter_model.safetensors" in str(info.value)
    (tmp_path / "b").mkdir()
    with pytest.raises(InputError, match="no adapter_config.json"):
        load_adapter(tmp_path / "b")
