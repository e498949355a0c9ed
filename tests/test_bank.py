import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from taskexpert.bank import bank_entries, load_adapter, load_bank, validate_adapter
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
    assert module.rank == 2 and module.scaling == pytest.approx(1.5, rel=1e-6)
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


# --- validation against the base model and whole-bank loading ----------------------------------


def _bank(tmp_path, model, names=("one", "two")):
    """Random LoRAs for copies of `model` (which stays untouched) in tmp_path/bank."""
    for seed, name in enumerate(names):
        save_random_lora(
            copy.deepcopy(model),
            tmp_path / "bank" / name,
            seed=seed,
            r=2,
            target_modules=["q_proj", "v_proj"],
        )
    return tmp_path / "bank"


def test_adapter_for_another_base_is_rejected_by_name_or_fatal_when_strict(tiny_llama, tmp_path):
    root = _bank(tmp_path, tiny_llama)
    config = copy.deepcopy(tiny_llama.config)
    config.hidden_size, config.intermediate_size = 48, 96
    wider = type(tiny_llama)(config)
    save_random_lora(wider, root / "other_base", r=2, target_modules=["q_proj"])
    bank = load_bank(root, tiny_llama)
    assert bank.names == ["one", "two"]
    assert "model.layers.0.self_attn.q_proj: lora_A (2, 48)" in bank.rejected["other_base"]
    assert "do not fit the base layer (32 in, 32 out)" in bank.rejected["other_base"]
    save_random_lora(wider, root / "wide_all", r=2, target_modules=["q_proj", "k_proj", "v_proj"])
    reason = load_bank(root, tiny_llama).rejected["wide_all"]  # one line, not one per module
    assert reason.count("do not fit") == 2 and "and 4 more module(s) like these" in reason
    with pytest.raises(InputError, match="adapter 'other_base' does not fit the base model"):
        load_bank(root, tiny_llama, strict=True)


def test_validate_reports_modules_ranks_names_and_values(tiny_llama, tmp_path):
    root = _bank(tmp_path, tiny_llama, names=("one",))
    adapter = load_adapter(root / "one")
    assert validate_adapter(adapter, tiny_llama) == []
    adapter.config["base_model_name_or_path"] = "org/some-7b"
    tiny_llama.config._name_or_path = "/models/tiny-llama"
    problems = validate_adapter(adapter, tiny_llama)
    assert [p.fatal for p in problems] == [True]  # shapes fit, the named base does not: refused
    assert str(problems[0]).startswith("trained on base model 'org/some-7b'")
    assert "--allow-other-base" in str(problems[0])
    problems = validate_adapter(adapter, tiny_llama, allow_other_base=True)
    assert [p.fatal for p in problems] == [False]
    assert str(problems[0]).startswith("warning: trained on base model 'org/some-7b'")
    tiny_llama.config._name_or_path = "/elsewhere/Some-7B/"
    assert validate_adapter(adapter, tiny_llama) == []  # same model, another machine
    adapter.config["r"] = 8
    module = adapter.modules.pop("model.layers.0.self_attn.q_proj")
    adapter.modules["model.layers.9.self_attn.q_proj"] = module
    adapter.modules["model.layers.1.self_attn.v_proj"].B[0, 0] = float("nan")
    messages = [str(p) for p in validate_adapter(adapter, tiny_llama)]
    assert "target module(s) not in the base model: model.layers.9.self_attn.q_proj" in messages[0]
    assert any("rank 2 in the weights but r=8" in m for m in messages)
    assert any("NaN or inf" in m for m in messages)
    adapter.modules = {"model.layers.0.mlp": module}
    assert "not a linear layer" in str(validate_adapter(adapter, tiny_llama)[-1])


def test_corrupt_adapter_in_a_bank_is_skipped_with_its_reason(tiny_llama, tmp_path):
    root = _bank(tmp_path, tiny_llama)
    (root / "two" / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    (root / "not_an_adapter").mkdir()
    bank = load_bank(root, tiny_llama)
    assert bank.names == ["one"]
    assert "corrupt safetensors" in bank.rejected["two"]
    assert "no adapter_config.json" in bank.rejected["not_an_adapter"]
    with pytest.raises(InputError, match="adapter 'not_an_adapter'"):
        load_bank(root, tiny_llama, strict=True)


def test_empty_or_unusable_bank_is_an_error(tiny_llama, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no usable adapters"):
        load_bank(tmp_path / "empty", tiny_llama)
    root = _bank(tmp_path, tiny_llama, names=("only",))
    (root / "only" / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="no usable adapters .*only: .*corrupt"):
        load_bank(root, tiny_llama)
    with pytest.raises(InputError, match="bank not found"):
        load_bank(tmp_path / "missing", tiny_llama)


def test_list_file_names_paths_and_single_adapter_dir(tiny_llama, tmp_path):
    root = _bank(tmp_path, tiny_llama)
    listing = tmp_path / "bank.txt"
    listing.write_text(f"# my bank\nbank/one\n\nrenamed\t{root / 'two'}\n", encoding="utf-8")
    bank = load_bank(listing, tiny_llama)
    assert bank.names == ["one", "renamed"]
    assert bank.adapters["renamed"].path == root / "two"
    listing.write_text("bank/one\nbank/one\n", encoding="utf-8")
    with pytest.raises(InputError, match="listed twice") as info:
        load_bank(listing, tiny_llama)
    assert info.value.line == 2
    assert load_bank(root / "one", tiny_llama).names == ["one"]
    assert load_bank(root).names == ["one", "two"]  # without a base model: no fit checks


def test_bank_entries_name_adapters_without_reading_them(tmp_path):
    (tmp_path / "bank" / "b").mkdir(parents=True)
    (tmp_path / "bank" / "a").mkdir()
    (tmp_path / "bank" / ".hidden").mkdir()
    assert bank_entries(tmp_path / "bank") == [
        ("a", tmp_path / "bank" / "a", None),
        ("b", tmp_path / "bank" / "b", None),
    ]
    listing = tmp_path / "bank.txt"
    listing.write_text("# comment\nbank/b\nmine\tbank/a\n", encoding="utf-8")
    assert bank_entries(str(listing)) == [
        ("b", tmp_path / "bank" / "b", 2),
        ("mine", tmp_path / "bank" / "a", 3),
    ]
    with pytest.raises(InputError, match="bank not found"):
        bank_entries(tmp_path / "nowhere")
