import copy
import json

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from tiny_models import random_lora

from taskexpert.bank import load_adapter
from taskexpert.errors import InputError
from taskexpert.peft_glue import (
    AdapterSwitcher,
    attach_checked,
    config_for,
    fresh_lora,
    load_lora,
    lora_config,
    merged_lora,
    peft_weight_key,
    save_lora,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def _untouched(model, reference) -> bool:
    return not any("lora" in n for n, _ in model.named_modules()) and all(
        torch.equal(p, reference[n]) for n, p in model.named_parameters()
    )


def test_lora_config_takes_names_or_a_peft_keyword():
    listed = lora_config(4, 8, ("q_proj", "v_proj"), dropout=0.1)
    assert (listed.r, listed.lora_alpha, listed.lora_dropout) == (4, 8, 0.1)
    assert set(listed.target_modules) == {"q_proj", "v_proj"}
    assert listed.task_type == "CAUSAL_LM"
    assert lora_config(2, 4, "all-linear").target_modules == "all-linear"


def test_a_fresh_lora_leaves_the_base_alone_is_seeded_and_saves_what_peft_and_we_read(
    tmp_path, tiny_llama
):
    reference = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    one = fresh_lora(tiny_llama, lora_config(4, 8, ["q_proj"]), seed=3, base_name="tiny")
    two = fresh_lora(tiny_llama, lora_config(4, 8, ["q_proj"]), seed=3)
    assert _untouched(tiny_llama, reference)
    a_one = {n: p for n, p in one.named_parameters() if "lora_A" in n}
    a_two = dict(two.named_parameters())
    assert a_one and all(torch.equal(p, a_two[n]) for n, p in a_one.items())
    save_lora(one, tmp_path / "adapter")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert "adapter_model.bin" not in files and not any(f.startswith(".") for f in files)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny" and config["r"] == 4
    with safe_open(str(tmp_path / "adapter" / "adapter_model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
    modules = [f"model.layers.{i}.self_attn.q_proj" for i in range(2)]
    assert keys == {peft_weight_key(m, part) for m in modules for part in "AB"}
    assert set(load_adapter(tmp_path / "adapter").modules) == set(modules)


def test_load_lora_on_a_copy_or_in_place_for_eval_or_training(tmp_path, tiny_llama):
    path = random_lora(tiny_llama, tmp_path / "a", seed=1)
    reference = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    evaluated = load_lora(tiny_llama, path)
    assert _untouched(tiny_llama, reference) and not evaluated.training
    assert not any(p.requires_grad for p in evaluated.parameters())
    trained = load_lora(tiny_llama, path, trainable=True)
    assert trained.training
    assert {n for n, p in trained.named_parameters() if p.requires_grad} == {
        n for n, _ in trained.named_parameters() if "lora_" in n
    }
    expected = _logits(evaluated)
    assert not torch.allclose(expected, _logits(tiny_llama))  # the adapter is in
    base = copy.deepcopy(tiny_llama)
    in_place = load_lora(base, path, on_copy=False)
    assert any("lora" in n for n, _ in base.named_modules())
    torch.testing.assert_close(_logits(in_place), expected)


def test_a_merged_lora_computes_what_the_peft_model_does(tmp_path, tiny_llama):
    path = random_lora(tiny_llama, tmp_path / "a", seed=2)
    merged = merged_lora(tiny_llama, path)
    assert not hasattr(merged, "peft_config") and not merged.training
    assert not any("lora" in n for n, _ in tiny_llama.named_modules())
    unmerged = PeftModel.from_pretrained(copy.deepcopy(tiny_llama), str(path)).eval()
    torch.testing.assert_close(_logits(merged), _logits(unmerged), atol=1e-5, rtol=1e-4)


def test_config_for_keeps_each_modules_rank_and_alpha(tmp_path, tiny_llama):
    path = random_lora(
        tiny_llama,
        tmp_path / "mixed",
        seed=4,
        targets=("q_proj", "o_proj"),
        rank_pattern={"o_proj": 2},
        alpha_pattern={"o_proj": 6},
        use_rslora=True,
    )
    adapter = load_adapter(path)
    config = config_for(adapter)
    assert config.use_rslora and set(config.target_modules) == set(adapter.modules)
    for name in adapter.modules:
        rank, alpha = (2, 6) if name.endswith("o_proj") else (4, 8)
        assert config.rank_pattern.get(name, config.r) == rank
        assert config.alpha_pattern.get(name, config.lora_alpha) == alpha


def test_switching_adapters_in_memory_equals_loading_each_and_restores_the_base(
    tmp_path, tiny_llama
):
    paths = [
        random_lora(tiny_llama, tmp_path / "a", seed=5),
        random_lora(tiny_llama, tmp_path / "b", seed=6, r=2, alpha=4, targets=("up_proj",)),
        random_lora(
            tiny_llama,
            tmp_path / "c",
            seed=7,
            targets=("q_proj", "o_proj"),
            rank_pattern={"o_proj": 2},
            use_rslora=True,
        ),
    ]
    reference = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    tiny_llama.train()
    with AdapterSwitcher(tiny_llama) as switcher:
        for path in paths:
            got = _logits(switcher.activate(load_adapter(path)))
            torch.testing.assert_close(got, _logits(load_lora(tiny_llama, path)))
    assert _untouched(tiny_llama, reference) and tiny_llama.training
    assert all(p.requires_grad for p in tiny_llama.parameters())


def test_attach_checked_refuses_a_misfit_before_peft_sees_it(tmp_path, tiny_llama):
    from tiny_models import make_tiny_llama

    wide = make_tiny_llama(tiny_llama.config.vocab_size, hidden=48)
    foreign = random_lora(wide, tmp_path / "foreign", seed=8)
    with pytest.raises(InputError, match="does not fit the base model"):
        attach_checked(tiny_llama, foreign, allow_other_base=True)
    assert not any("lora" in n for n, _ in tiny_llama.named_modules())
    fitting = random_lora(tiny_llama, tmp_path / "fits", seed=9)
    expected = _logits(load_lora(tiny_llama, fitting))
    attached = attach_checked(tiny_llama, fitting, loaded=load_adapter(fitting))
    torch.testing.assert_close(_logits(attached), expected)
