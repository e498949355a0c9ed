import copy
import json

import pytest
import torch
from peft import PeftModel

from taskexpert.bank import load_adapter
from taskexpert.errors import InputError
from taskexpert.moe import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    MoeConfig,
    attach_mixture,
    export_merged_lora,
    fixed_gates,
    load,
    mixture_config,
    mixture_layers,
    save_mixture,
)

from .conftest import variant_of


@pytest.fixture()
def trained_moe(make_experts, tiny_llama):
    """A mixture whose routers and experts moved away from their initial values."""
    base = copy.deepcopy(tiny_llama)
    moe = attach_mixture(base, make_experts([2, 4, 3, 8]), MoeConfig(top_k=2, router_seed=3))
    torch.manual_seed(7)
    with torch.no_grad():
        for layer in mixture_layers(moe).values():
            layer.router.weight.normal_(std=1.0)
            layer.lora_A[0].add_(0.1)
    return moe


def test_save_load_round_trip_gives_identical_logits(trained_moe, tiny_llama, tmp_path, input_ids):
    save_mixture(trained_moe, tmp_path / "moe")
    assert sorted(p.name for p in (tmp_path / "moe").iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    restored = load(copy.deepcopy(tiny_llama), tmp_path / "moe")
    assert mixture_config(restored) == mixture_config(trained_moe)
    with torch.no_grad():
        assert torch.equal(
            restored(input_ids=input_ids).logits, trained_moe(input_ids=input_ids).logits
        )
    assert not any(p.requires_grad for n, p in restored.named_parameters() if "base_layer" in n)


def test_loads_onto_the_same_base_in_another_dtype_or_under_another_name(
    trained_moe, tiny_llama, tmp_path, input_ids
):
    save_mixture(trained_moe, tmp_path / "moe")
    half = load(copy.deepcopy(tiny_llama).to(torch.bfloat16), tmp_path / "moe")
    layer = next(iter(mixture_layers(half).values()))
    assert layer.lora_A[0].dtype == torch.float32  # experts stay in float32 on a half base
    with torch.no_grad():
        logits = half(input_ids=input_ids).logits
        reference = trained_moe(input_ids=input_ids).logits
    assert logits.dtype == torch.bfloat16
    assert torch.allclose(logits.float(), reference, atol=0.1)
    renamed = copy.deepcopy(tiny_llama)
    renamed.name_or_path = "/models/some-other-name"
    mixture_config(trained_moe).base_model_name = "org/tiny"
    save_mixture(trained_moe, tmp_path / "moe")
    with pytest.warns(UserWarning, match="their weights match"):
        load(renamed, tmp_path / "moe")


def test_weights_file_holds_experts_and_routers_only(trained_moe, tmp_path):
    from safetensors.torch import load_file

    save_mixture(trained_moe, tmp_path / "moe")
    keys = set(load_file(str(tmp_path / "moe" / WEIGHTS_FILE)))
    assert len(keys) == 4 * (1 + 2 * 4)  # 4 modules x (router + A, B of 4 experts)
    assert not any("base_layer" in k for k in keys)


def test_loading_onto_another_base_is_refused(trained_moe, tiny_llama, tmp_path):
    save_mixture(trained_moe, tmp_path / "moe")
    with pytest.raises(InputError, match="another base model"):
        load(variant_of(tiny_llama, seed=1), tmp_path / "moe")
    with pytest.raises(InputError, match="do not fit the base layer"):
        load(variant_of(tiny_llama, hidden_size=64, intermediate_size=128), tmp_path / "moe")
    shallow = variant_of(tiny_llama, num_hidden_layers=1)
    with pytest.raises(InputError, match="model.layers.1.self_attn.q_proj is not in the base"):
        load(shallow, tmp_path / "moe")
    assert not mixture_layers(shallow)


def test_missing_or_inconsistent_files_are_named(trained_moe, tiny_llama, tmp_path):
    from safetensors.torch import load_file, save_file

    with pytest.raises(InputError, match=f"no {CONFIG_FILE}"):
        load(tiny_llama, tmp_path)
    save_mixture(trained_moe, tmp_path / "moe")
    weights = tmp_path / "moe" / WEIGHTS_FILE
    tensors = load_file(str(weights))
    del tensors["model.layers.1.self_attn.v_proj.lora_B.2"]
    save_file(tensors, str(weights))
    with pytest.raises(InputError, match=r"missing tensor model\.layers\.1\.self_attn\.v_proj"):
        load(copy.deepcopy(tiny_llama), tmp_path / "moe")
    weights.unlink()
    with pytest.raises(InputError, match=f"no {WEIGHTS_FILE}"):
        load(copy.deepcopy(tiny_llama), tmp_path / "moe")
    config = json.loads((tmp_path / "moe" / CONFIG_FILE).read_text())
    config["top_k"] = 0
    (tmp_path / "moe" / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(InputError, match="field 'top_k'"):
        load(copy.deepcopy(tiny_llama), tmp_path / "moe")


def test_save_is_atomic_and_never_erases_other_directories(trained_moe, tmp_path, monkeypatch):
    out = tmp_path / "out"
    foreign = out / "notes"
    foreign.mkdir(parents=True)
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not a previous"):
        save_mixture(trained_moe, foreign)
    assert (foreign / "keep.txt").read_text() == "mine"

    import safetensors.torch

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_mixture(trained_moe, out / "moe")
    assert list(out.iterdir()) == [foreign]


def exported_and_fixed(moe, base, tmp_path, input_ids, gates):
    """Logits of the exported merged LoRA, and of the mixture under the same fixed gates."""
    export_merged_lora(moe, tmp_path / "merged", gates=gates)
    merged = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "merged").eval()
    with torch.no_grad():
        with fixed_gates(moe, gates):
            expected = moe(input_ids=input_ids).logits
        return merged(input_ids=input_ids).logits, expected


@pytest.mark.parametrize("gates", ["uniform", {"expert1": 0.7, "expert3": 0.3}])
def test_export_equals_the_mixture_under_fixed_gates(
    trained_moe, tiny_llama, tmp_path, input_ids, gates
):
    got, expected = exported_and_fixed(trained_moe, tiny_llama, tmp_path, input_ids, gates)
    with torch.no_grad():
        routed = trained_moe(input_ids=input_ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, routed, atol=1e-3)  # the export is lossy: no routing
    adapter = load_adapter(tmp_path / "merged")
    expected_rank = 2 + 4 + 3 + 8 if gates == "uniform" else 4 + 8
    assert adapter.ranks == {expected_rank}
    assert {m.scaling for m in adapter.modules.values()} == {1.0}


def test_export_rejects_bad_gates(trained_moe, tmp_path):
    with pytest.raises(InputError, match="3 gates for 4 experts"):
        export_merged_lora(trained_moe, tmp_path / "m", gates=[1, 0, 0])
    with pytest.raises(InputError, match="no expert named 'nope'"):
        export_merged_lora(trained_moe, tmp_path / "m", gates={"nope": 1.0})
    with pytest.raises(InputError, match="all gates are zero"):
        export_merged_lora(trained_moe, tmp_path / "m", gates=[0, 0, 0, 0])
    assert not (tmp_path / "m").exists()


@pytest.fixture()
def shared_moe(make_experts, tiny_llama):
    """A mixture with a shared expert of rank 3 whose B_s moved away from 0."""
    base = copy.deepcopy(tiny_llama)
    config = MoeConfig(top_k=2, router_seed=3, shared_rank=3, shared_alpha=9.0)
    moe = attach_mixture(base, make_experts([2, 4, 3]), config)
    torch.manual_seed(7)
    with torch.no_grad():
        for layer in mixture_layers(moe).values():
            layer.router.weight.normal_(std=1.0)
            layer.shared.lora_B.normal_(std=0.5)
    return moe


def test_shared_expert_round_trips_and_old_files_load_without_one(
    shared_moe, trained_moe, tiny_llama, tmp_path, input_ids
):
    save_mixture(shared_moe, tmp_path / "moe")
    keys = set(safe_open_keys(tmp_path / "moe" / WEIGHTS_FILE))
    modules = mixture_config(shared_moe).modules
    assert {f"{m}.shared.lora_{p}" for m in modules for p in "AB"} <= keys
    restored = load(copy.deepcopy(tiny_llama), tmp_path / "moe")
    assert mixture_config(restored) == mixture_config(shared_moe)
    assert next(iter(mixture_layers(restored).values())).shared.scaling == 3.0
    with torch.no_grad():
        assert torch.equal(
            restored(input_ids=input_ids).logits, shared_moe(input_ids=input_ids).logits
        )
    assert all(p.requires_grad for n, p in restored.named_parameters() if ".shared." in n)
    # a directory as versions before the shared expert wrote it: no keys, no tensors
    save_mixture(trained_moe, tmp_path / "old")
    assert "shared_rank" not in json.loads((tmp_path / "old" / CONFIG_FILE).read_text())
    old = load(copy.deepcopy(tiny_llama), tmp_path / "old")
    assert mixture_config(old).shared_rank == 0
    assert all(layer.shared is None for layer in mixture_layers(old).values())


def safe_open_keys(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def test_shared_expert_tensors_that_disagree_with_the_config_are_named(
    shared_moe, tiny_llama, tmp_path
):
    from safetensors.torch import load_file, save_file

    save_mixture(shared_moe, tmp_path / "moe")
    weights = tmp_path / "moe" / WEIGHTS_FILE
    tensors = load_file(str(weights))
    module = mixture_config(shared_moe).modules[0]
    wrong = dict(tensors, **{f"{module}.shared.lora_A": tensors[f"{module}.shared.lora_A"][:2]})
    save_file(wrong, str(weights))
    with pytest.raises(InputError, match=rf"shared expert, module {module}: lora_A \(2, "):
        load(copy.deepcopy(tiny_llama), tmp_path / "moe")
    missing = {k: v for k, v in tensors.items() if ".shared." not in k}
    save_file(missing, str(weights))
    with pytest.raises(InputError, match=r"missing tensor .*shared.*shared_rank=3"):
        load(copy.deepcopy(tiny_llama), tmp_path / "moe")
    config = json.loads((tmp_path / "moe" / CONFIG_FILE).read_text())
    config.pop("shared_rank"), config.pop("shared_alpha")
    (tmp_path / "moe" / CONFIG_FILE).write_text(json.dumps(config))
    save_file(tensors, str(weights))
    with pytest.raises(InputError, match=r"unexpected tensor .*shared.*shared_rank=0"):
        load(copy.deepcopy(tiny_llama), tmp_path / "moe")


@pytest.mark.parametrize("gates", ["uniform", [0.0, 0.0, 0.0]])
def test_export_folds_the_shared_expert_at_gate_one(
    shared_moe, tiny_llama, tmp_path, input_ids, gates
):
    """The shared expert is one more stacked block: rank grows by 3; with every routed expert
    at 0 the export is the shared LoRA alone, not refused (it is not the base model)."""
    got, expected = exported_and_fixed(shared_moe, tiny_llama, tmp_path, input_ids, gates)
    with torch.no_grad():
        bare = tiny_llama(input_ids=input_ids).logits
    # float32, the same terms summed in another order: 1e-5 as for the plain export
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, bare, atol=1e-3)
    ranks = load_adapter(tmp_path / "merged").ranks
    assert ranks == {2 + 4 + 3 + 3 if gates == "uniform" else 3}
