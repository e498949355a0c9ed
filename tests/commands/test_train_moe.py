"""`taskexpert train-moe` end to end on a tiny world, and every bad-input case of issue 5."""

from __future__ import annotations

import json

import pytest
from moe_world import build_world, jsonl
from typer.testing import CliRunner

from taskexpert.cli import app
from taskexpert.errors import InputError

runner = CliRunner()
FAST = ["--max-steps", "3", "--batch-size", "4", "--micro-batch-size", "2", "--quiet"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


def run(world, out, *extra, experts=None, data=None):
    args = [
        "train-moe",
        "--base", world.base,
        "--experts", experts or world.experts,
        "--data", data or world.data,
        "--out", out,
        *FAST,
        *extra,
    ]  # fmt: skip
    return runner.invoke(app, [str(a) for a in args])


def test_trains_and_writes_a_loadable_mixture_with_a_router_log(world, tmp_path):
    from transformers import AutoModelForCausalLM

    from taskexpert.moe import load_mixture, mixture_config

    out = tmp_path / "moe"
    result = run(
        world, out, "--kshot", world.kshot, "--router-init", "kshot", "--top-k", "2",
        "--lr", "1e-3", "--router-lr", "5e-3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "mixture of 3 experts (e0, e1, e2)" in result.output
    assert {p.name for p in out.iterdir()} == {
        "moe_config.json",
        "moe_model.safetensors",
        "train_log.jsonl",
        "train_summary.json",
    }
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())  # work dir gone
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log][-1] == 3
    for entry in log:
        assert 0.0 <= entry["router_entropy"] <= entry["router_max_entropy"] + 1e-6
        assert set(entry["expert_load"]) == {"e0", "e1", "e2"}
        assert sum(entry["expert_load"].values()) == pytest.approx(1.0, abs=1e-3)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["data"] == {"kshot": 4, "data": 8, "duplicates_dropped": 0, "total": 12}
    assert summary["router_init"] == "kshot" and summary["train"]["steps"] == 3
    assert sum(summary["kshot_router_examples"].values()) == 4
    assert [e["rank"] for e in summary["experts"]] == [4, 2, 4]  # each expert keeps its own r
    lrs = {g["name"]: g["lr"] for g in summary["train"]["param_groups"]}
    assert summary["config"]["router_lr"] == 5e-3 and sorted(lrs.values()) == [1e-3, 5e-3]
    model = load_mixture(AutoModelForCausalLM.from_pretrained(str(world.base)), out)
    assert mixture_config(model).expert_names == ["e0", "e1", "e2"]


def assert_refused(result, *needles, out=None):
    assert result.exit_code != 0
    assert isinstance(result.exception, InputError), result.exception
    for needle in needles:
        assert needle in str(result.exception), str(result.exception)
    if out is not None:
        assert not out.exists()
        assert not any(".partial" in p.name for p in out.parent.iterdir())


def experts_file(world, tmp_path, chosen, bank=True):
    data = {"chosen": chosen, **({"inputs": {"bank": str(world.bank)}} if bank else {})}
    path = tmp_path / "experts.json"
    path.write_text(json.dumps(data))
    return path


def test_experts_that_target_different_modules_are_named(world, tmp_path):
    out = tmp_path / "moe"
    experts = experts_file(world, tmp_path, ["e0", "other_modules"])
    assert_refused(run(world, out, experts=experts), "other_modules", "different modules", out=out)


def test_experts_with_incompatible_shapes_are_named(world, tmp_path):
    out = tmp_path / "moe"
    experts = experts_file(world, tmp_path, ["e0", "foreign"])
    assert_refused(run(world, out, experts=experts), "'foreign'", "does not fit", out=out)


def test_a_chosen_adapter_missing_from_the_bank_is_named(world, tmp_path):
    out = tmp_path / "moe"
    experts = experts_file(world, tmp_path, ["e0", "ghost"])
    assert_refused(run(world, out, experts=experts), "'ghost'", "not in the bank", out=out)


def test_an_experts_file_without_a_bank_asks_for_one(world, tmp_path):
    out = tmp_path / "moe"
    experts = experts_file(world, tmp_path, ["e0", "e1"], bank=False)
    assert_refused(run(world, out, experts=experts), "--bank", out=out)
    result = run(world, out, "--bank", world.bank, experts=experts)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("content", "needle"),
    [("{", "malformed JSON"), ('{"chosen": []}', "chosen"), ('{"chosen": ["a", "a"]}', "twice")],
)
def test_malformed_experts_files(world, tmp_path, content, needle):
    path = tmp_path / "experts.json"
    path.write_text(content)
    out = tmp_path / "moe"
    assert_refused(run(world, out, experts=path), str(path), needle, out=out)


def test_empty_training_data_is_refused(world, tmp_path):
    out = tmp_path / "moe"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_refused(run(world, out, data=empty), str(empty), "no records", out=out)


def test_conflicting_ids_between_kshot_and_data_are_refused(world, tmp_path):
    out = tmp_path / "moe"
    clash = jsonl(tmp_path / "clash.jsonl", [{"id": "k-0", "instruction": "x", "output": "y"}])
    assert_refused(run(world, out, "--kshot", world.kshot, data=clash), "'k-0'", out=out)


def test_other_bad_options(world, tmp_path):
    out = tmp_path / "moe"
    assert_refused(run(world, out, "--router-init", "kshot"), "--kshot", out=out)
    assert_refused(run(world, out, "--top-k", "4"), "top_k", out=out)
    assert_refused(run(world, out, "--router-lr", "-1"), "router-lr", out=out)
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert_refused(run(world, foreign), "not a mixture directory")
    assert (foreign / "keep.txt").read_text() == "mine"
