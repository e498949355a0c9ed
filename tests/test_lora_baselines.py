import copy
import json

import pytest
import torch
from peft import PeftModel
from tiny_models import random_lora

from taskexpert.artifacts import ExpertsDocument
from taskexpert.bank import load_adapter
from taskexpert.errors import InputError
from taskexpert.experts.scoring import BASE_ROW
from taskexpert.lm import mean_nll
from taskexpert.lora_baselines import (
    best_adapter,
    lora_trainable_params,
    matched_rank,
    train_lora,
    uniform_merge,
)
from taskexpert.peft_glue import fresh_lora, lora_config
from taskexpert.prompts import format_prompt
from taskexpert.records import Record
from taskexpert.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")
IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
ATOL = 1e-5  # logits of a merged adapter vs the manual sum, float32


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def _row(em, rppl, **extra):
    return {"em": em, "rppl": rppl, "ppl": 1.0, "seconds": 0.1, **extra}


# --- best_adapter -----------------------------------------------------------------------------


def test_best_adapter_picks_by_em_then_rppl_and_skips_base_and_rejected():
    document = ExpertsDocument.model_validate(
        {
            "chosen": ["a"],
            "scores": {
                BASE_ROW: _row(0.9, 1.0),
                "a": _row(0.5, 3.0),
                "b": _row(0.7, 4.0),
                "c": _row(0.7, 2.5),
                "d": _row(0.7, "inf"),
                "ghost": _row(0.95, 1.0),
            },
            "rejected": {"ghost": "unreadable"},
        }
    )
    assert best_adapter(document) == "c"
    document.scores["c"].rppl = "inf"
    assert best_adapter(document) == "b"
    document.scores["a"].em = 0.8
    assert best_adapter(document) == "a"


def test_best_adapter_needs_scores():
    with pytest.raises(InputError, match="no adapter scores"):
        best_adapter(ExpertsDocument.model_validate({"chosen": ["a"]}))
    only_base = ExpertsDocument.model_validate({"chosen": ["a"], "scores": {BASE_ROW: _row(1, 1)}})
    with pytest.raises(InputError):
        best_adapter(only_base)


# --- uniform_merge ----------------------------------------------------------------------------


def test_uniform_merge_is_base_plus_the_mean_delta_and_loads_back(tmp_path, tiny_llama):
    reference = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    paths = [
        # rsLoRA first: the merged config is copied from the first adapter's
        random_lora(tiny_llama, tmp_path / "b", seed=2, r=2, alpha=3, use_rslora=True),
        random_lora(tiny_llama, tmp_path / "a", seed=1),
        random_lora(tiny_llama, tmp_path / "c.v1", seed=3, targets=("q_proj",)),
    ]
    adapters = [(p.name, p) for p in paths]
    out = uniform_merge(tiny_llama, adapters, tmp_path / "merged")
    assert out == tmp_path / "merged"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    # the caller's model is handed back unchanged
    assert not any("lora" in n for n, _ in tiny_llama.named_modules())
    assert all(torch.equal(p, reference[n]) for n, p in tiny_llama.named_parameters())
    assert all(p.requires_grad for p in tiny_llama.parameters())

    manual = copy.deepcopy(tiny_llama)
    weights = dict(manual.named_parameters())
    with torch.no_grad():
        for path in paths:
            for module, lora in load_adapter(path).modules.items():
                weights[f"{module}.weight"] += lora.delta_weight() / len(paths)
    loaded = PeftModel.from_pretrained(copy.deepcopy(tiny_llama), str(out)).eval()
    expected = _logits(manual)
    assert not torch.allclose(expected, _logits(tiny_llama), atol=1e-3)  # the merge does something
    torch.testing.assert_close(_logits(loaded), expected, atol=ATOL, rtol=0)


def test_uniform_merge_of_nothing_is_an_error(tmp_path, tiny_llama):
    with pytest.raises(InputError):
        uniform_merge(tiny_llama, [], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


# --- parameter counts -------------------------------------------------------------------------


def _peft_count(base, rank, targets) -> int:
    model = fresh_lora(base, lora_config(rank, 2 * rank, targets), seed=0)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), ("o_proj",), "all-linear"])
def test_lora_param_count_is_what_peft_trains(tiny_llama, targets):
    for rank in (1, 3):
        assert lora_trainable_params(tiny_llama, rank, targets) == _peft_count(
            tiny_llama, rank, targets
        )


def test_matched_rank_round_trips(tiny_llama):
    targets = ("q_proj", "v_proj")
    per_rank = lora_trainable_params(tiny_llama, 1, targets)
    assert per_rank > 0
    for rank in (1, 2, 7, 16):
        assert (
            matched_rank(tiny_llama, lora_trainable_params(tiny_llama, rank, targets), targets)
            == rank
        )
    for target in (1, 5_000, 12_345, 100_000):
        rank = matched_rank(tiny_llama, target, targets)
        count = lora_trainable_params(tiny_llama, rank, targets)
        assert rank >= 1 and (abs(count - target) <= per_rank or rank == 1)
        for other in (rank - 1, rank + 1):  # no neighbouring rank is closer
            if other >= 1:
                assert abs(count - target) <= abs(
                    lora_trainable_params(tiny_llama, other, targets) - target
                )
    with pytest.raises(InputError, match="no module"):
        matched_rank(tiny_llama, 1000, ("no_such_proj",))


# --- train_lora -------------------------------------------------------------------------------


def test_train_lora_lowers_the_loss_and_saves_an_adapter_that_loads(
    tmp_path, tiny_llama, char_tokenizer
):
    words = ["alpha", "bravo", "delta", "gamma", "kilo", "lima", "oscar", "tango"]
    records = [Record(id=str(i), instruction=f"say {i}", output=words[i]) for i in range(8)]
    config = TrainConfig(
        max_steps=30, lr=5e-2, batch_size=4, progress=False, seed=3, schedule="constant"
    )
    reference = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    summary = train_lora(
        tiny_llama,
        char_tokenizer,
        records,
        tmp_path / "lora",
        rank=4,
        alpha=8,
        targets=("q_proj", "v_proj"),
        train=config,
        log=tmp_path / "train_log.jsonl",
    )
    assert summary["steps"] == 30 and summary["rank"] == 4
    logged = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged] == [10, 20, 30]  # every log_every (10) steps
    assert logged[-1]["loss"] == pytest.approx(summary["final_loss"], abs=1e-5)
    # a rank-4 LoRA on a random 32-wide model moves the loss by ~0.3 nats (ln 104 ~ 4.6 at start)
    assert summary["final_loss"] < summary["first_loss"] - 0.15
    assert summary["trainable_parameters"] == lora_trainable_params(
        tiny_llama, 4, ("q_proj", "v_proj")
    )
    assert all(torch.equal(p, reference[n]) for n, p in tiny_llama.named_parameters())
    loaded = PeftModel.from_pretrained(copy.deepcopy(tiny_llama), str(tmp_path / "lora")).eval()
    assert loaded.peft_config["default"].r == 4
    prompts = [format_prompt(r, char_tokenizer) for r in records]
    outputs = [r.output for r in records]
    before = sum(mean_nll(tiny_llama, char_tokenizer, prompts, outputs))
    after = sum(mean_nll(loaded, char_tokenizer, prompts, outputs))
    assert after < before - 0.1 * len(records)  # the saved adapter is the trained one
