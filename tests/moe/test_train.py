"""The mixture's training run: experts.json resolution, data merging, checkpoints and resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from taskexpert import rundir
from taskexpert.errors import InputError
from taskexpert.moe import attach_mixture, load_mixture, mixture_layers, mixture_state
from taskexpert.moe.layer import ROUTER_PARAMETER_PATTERN
from taskexpert.moe.train import (
    MoeTrainConfig,
    _TrainLog,
    expert_paths,
    read_experts_file,
    train_mixture,
    training_records,
    work_dir,
)
from taskexpert.records import Record


def rec(i, output="o"):
    return Record(id=str(i), instruction=f"q{i}", output=output)


def test_paper_defaults_accumulate_micro_batches_to_64():
    config = MoeTrainConfig()
    assert (config.epochs, config.lr, config.top_k, config.load_balancing_coef) == (5, 5e-5, 2, 0)
    train = config.train_config()
    assert train.batch_size * train.grad_accum == 64 and train.batch_size == 8
    small = MoeTrainConfig(batch_size=4, micro_batch_size=8).train_config()
    assert (small.batch_size, small.grad_accum) == (4, 1)


def test_bank_is_found_beside_the_experts_file(tmp_path, monkeypatch):
    (tmp_path / "run" / "bank" / "a").mkdir(parents=True)
    (tmp_path / "run" / "bank" / "b").mkdir()
    path = tmp_path / "run" / "experts.json"
    path.write_text(json.dumps({"chosen": ["b", "a"], "inputs": {"bank": "bank"}}))
    monkeypatch.chdir(tmp_path)  # "bank" is not relative to the working directory
    found = expert_paths(read_experts_file(path))
    assert [(n, p.name) for n, p in found] == [("b", "b"), ("a", "a")]
    with pytest.raises(InputError, match="bank not found"):
        expert_paths(read_experts_file(path), bank=tmp_path / "nowhere")


def test_kshot_and_data_merge_and_exact_duplicates_count_once():
    records, dropped = training_records([rec(1), rec(2)], [rec(2), rec(3)])
    assert [r.id for r in records] == ["1", "2", "3"] and dropped == 1
    with pytest.raises(InputError, match="'2' appears twice"):
        training_records([rec(2)], [rec(2, output="other")])
    with pytest.raises(InputError, match="empty output"):
        training_records([], [rec(4, output=" ")])


def test_a_resumed_log_drops_what_the_interrupted_run_logged_after_its_checkpoint(tmp_path):
    log = _TrainLog(tmp_path / "log.jsonl", keep_existing=False)
    for step in (1, 2, 3):
        log.append({"step": step})
    resumed = _TrainLog(tmp_path / "log.jsonl", keep_existing=True)
    resumed.append({"step": 3, "again": True})
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines == [{"step": 1}, {"step": 2}, {"step": 3, "again": True}]


def _records():
    return [
        Record(id=str(i), instruction=f"Add {i} and {i + 1}.", output=f"It is {2 * i + 1}.")
        for i in range(6)
    ]


def test_resume_after_an_interruption_ends_with_the_same_weights(
    make_experts, tiny_llama, char_tokenizer, tmp_path, monkeypatch
):
    adapters = make_experts([4, 2, 4])
    config = MoeTrainConfig(
        max_steps=4, batch_size=2, micro_batch_size=2, lr=1e-2, checkpoint_every=2, log_every=1
    )
    config = config.model_copy(update={"progress": False})

    def fresh():
        return attach_mixture(copy.deepcopy(tiny_llama), adapters)

    straight = fresh()
    train_mixture(straight, char_tokenizer, _records(), tmp_path / "straight", config)

    out = tmp_path / "moe"
    append = _TrainLog.append

    def crash_at_step_3(self, entry):
        if entry["step"] == 3:
            raise KeyboardInterrupt
        append(self, entry)

    monkeypatch.setattr(_TrainLog, "append", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_mixture(fresh(), char_tokenizer, _records(), out, config)
    assert not out.exists() and (work_dir(out) / "checkpoint").is_dir()
    monkeypatch.setattr(_TrainLog, "append", append)

    with pytest.raises(InputError, match=r"other settings \(.*records 6, now 5"):
        train_mixture(fresh(), char_tokenizer, _records()[:5], out, config, resume=True)
    with rundir.lock(work_dir(out)), pytest.raises(InputError, match="another train-moe run"):
        train_mixture(fresh(), char_tokenizer, _records(), out, config, resume=True)
    resumed = fresh()
    summary = train_mixture(resumed, char_tokenizer, _records(), out, config, resume=True)
    assert summary["train"]["resumed_from"] == 2 and summary["train"]["steps"] == 4
    assert not work_dir(out).exists()
    expected, got = mixture_state(straight), mixture_state(resumed)
    initial = mixture_state(fresh())
    assert any(not torch.equal(initial[k], expected[k]) for k in expected)  # it did train
    assert set(expected) == set(got)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6)
    steps = [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    reloaded = load_mixture(copy.deepcopy(tiny_llama), out)
    torch.testing.assert_close(mixture_state(reloaded), got)


def test_router_lr_applies_to_the_routers_only(make_experts, tiny_llama, char_tokenizer, tmp_path):
    assert MoeTrainConfig().train_config().lr_overrides == {}
    config = MoeTrainConfig(max_steps=2, batch_size=2, lr=1e-2, router_lr=0.0, progress=False)
    assert config.train_config().lr_overrides == {ROUTER_PARAMETER_PATTERN: 0.0}
    model = attach_mixture(tiny_llama, make_experts([4, 2, 4]))
    before = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    summary = train_mixture(model, char_tokenizer, _records(), tmp_path / "moe", config)
    routers = {f"{m}.router.weight" for m in mixture_layers(model)}
    assert routers < set(before)
    for name, param in model.named_parameters():
        if name in before:  # routers at lr 0 stay put, every expert factor trains
            assert torch.equal(param, before[name]) == (name in routers), name
    groups = {g["name"]: g for g in summary["train"]["param_groups"]}
    assert groups[ROUTER_PARAMETER_PATTERN]["lr"] == 0.0 and groups["default"]["lr"] == 1e-2
    assert groups[ROUTER_PARAMETER_PATTERN]["tensors"] == len(routers) == 4
    assert groups["default"]["tensors"] == len(before) - len(routers)


def test_a_work_dir_of_an_older_format_is_refused_by_version(
    make_experts, tiny_llama, char_tokenizer, tmp_path
):
    """Before rundir.py the work directory's run.json had no version: --resume refuses it and
    says how to start over (rerunning without --resume replaces it)."""
    out = tmp_path / "moe"
    work_dir(out).mkdir()
    (work_dir(out) / "run.json").write_text(json.dumps({"config": {}, "records": 6}))
    model = attach_mixture(copy.deepcopy(tiny_llama), make_experts([2, 2]))
    config = MoeTrainConfig(max_steps=1, batch_size=2, micro_batch_size=2, progress=False)
    with pytest.raises(InputError, match=r"version 1 \(it has None.*without --resume"):
        train_mixture(model, char_tokenizer, _records(), out, config, resume=True)


def test_shared_rank_reaches_the_mixture_and_trains(
    make_experts, tiny_llama, char_tokenizer, tmp_path
):
    """--shared-rank gives every layer a shared LoRA that trains beside the experts (B_s
    leaves 0, and A_s moves once B_s has) and is saved with the mixture."""
    from taskexpert.moe.train import build_mixture

    assert MoeTrainConfig(shared_rank=0).moe_config().shared_rank == 0
    config = MoeTrainConfig(
        shared_rank=2, shared_alpha=8, max_steps=3, batch_size=2, lr=1e-2, progress=False
    )
    assert (config.moe_config().shared_rank, config.moe_config().shared_scaling) == (2, 4.0)
    model, _ = build_mixture(
        copy.deepcopy(tiny_llama), char_tokenizer, make_experts([2, 2]), config
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters() if ".shared." in n}
    assert len(before) == 2 * len(mixture_layers(model))
    summary = train_mixture(model, char_tokenizer, _records(), tmp_path / "moe", config)
    assert summary["shared_rank"] == 2
    after = dict(model.named_parameters())
    for name, value in before.items():
        assert not torch.equal(after[name], value), name
    reloaded = load_mixture(copy.deepcopy(tiny_llama), tmp_path / "moe")
    torch.testing.assert_close(mixture_state(reloaded), mixture_state(model), rtol=0, atol=0)


def test_a_run_started_before_a_setting_existed_resumes_at_its_default():
    from taskexpert.moe.train import _default_of

    assert _default_of("config.shared_rank") == 0 and _default_of("config.shared_alpha") is None
    assert _default_of("config.nope") is None and _default_of("records") is None
