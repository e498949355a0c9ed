"""`taskexpert evaluate` on the base, a PEFT LoRA and a mixture, and its bad-input cases."""

from __future__ import annotations

import json

import pytest
from moe_world import build_world, jsonl
from typer.testing import CliRunner

from taskexpert.cli import app
from taskexpert.errors import InputError

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def mixture(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "moe"
    args = ["train-moe", "--base", world.base, "--experts", world.experts, "--data", world.data]
    args += ["--out", out, "--max-steps", "1", "--batch-size", "2", "--quiet"]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return out


def evaluate(world, out, *extra, test=None, base=None):
    args = ["evaluate", "--base", base or world.base, "--test", test or world.test]
    args += ["--out", out, "--max-new-tokens", "6", "--quiet", *extra]
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("which", ["base", "adapter", "moe"])
def test_writes_eval_json_for_base_lora_and_mixture(world, mixture, tmp_path, which):
    extra = {"base": [], "adapter": ["--adapter", world.bank / "e0"], "moe": ["--moe", mixture]}
    out = tmp_path / "eval.json"
    result = evaluate(world, out, *extra[which])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["n"] == 4 and len(report["predictions"]) == 4
    assert report["n_multiple_choice"] == 2  # two of the four test records have choices
    assert 0 <= report["exact_match"] <= 1 and 0 <= report["multiple_choice_accuracy"] <= 1
    assert report["model"][which]
    assert report["settings"]["max_new_tokens"] == 6
    mc = [p for p in report["predictions"] if "mc_correct" in p]
    assert len(mc) == 2 and all(len(p["option_logprobs"]) == 3 for p in mc)
    assert f"exact match {report['exact_match']:.4f}" in result.output


def test_the_three_models_differ(world, mixture, tmp_path):
    """The adapter and the mixture are really applied: option scores change."""
    scores = {}
    for name, extra in {
        "base": [],
        "adapter": ["--adapter", world.bank / "e0"],
        "moe": ["--moe", mixture],
    }.items():
        out = tmp_path / f"{name}.json"
        assert evaluate(world, out, *extra).exit_code == 0
        report = json.loads(out.read_text())
        scores[name] = [p.get("option_logprobs") for p in report["predictions"]]
    assert scores["base"] != scores["adapter"] != scores["moe"] != scores["base"]


def test_default_generation_length_comes_from_the_gold_outputs(world, tmp_path):
    out = tmp_path / "eval.json"
    args = ["evaluate", "--base", world.base, "--test", world.test, "--out", out, "--no-mc"]
    result = runner.invoke(app, [str(a) for a in [*args, "--quiet"]])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    longest = max(len(json.loads(x)["output"]) for x in world.test.read_text().splitlines())
    assert report["settings"]["max_new_tokens"] == int(1.5 * longest) + 8  # character tokenizer
    assert "multiple_choice_accuracy" not in report


def refused(result, *needles):
    assert result.exit_code != 0
    assert isinstance(result.exception, InputError), result.exception
    for needle in needles:
        assert needle in str(result.exception), str(result.exception)


def test_a_mixture_from_another_base_is_refused(world, mixture, tmp_path):
    from tiny_models import make_char_tokenizer, make_tiny_llama

    other = tmp_path / "other_base"
    make_tiny_llama(len(make_char_tokenizer()), seed=7, hidden=32).save_pretrained(str(other))
    make_char_tokenizer().save_pretrained(str(other))
    out = tmp_path / "eval.json"
    refused(evaluate(world, out, "--moe", mixture, base=other), "another base model")
    assert not out.exists()


def test_bad_inputs_are_refused_before_anything_is_written(world, mixture, tmp_path):
    out = tmp_path / "eval.json"
    refused(evaluate(world, out, "--adapter", world.bank / "foreign"), "does not fit")
    refused(evaluate(world, out, "--adapter", world.bank / "e0", "--moe", mixture), "not both")
    refused(evaluate(world, out, "--moe", tmp_path / "missing"), "not a directory")
    bad = jsonl(
        tmp_path / "bad.jsonl",
        [{"id": "x1", "instruction": "q", "output": "o", "answer": "D", "choices": ["a", "b"]}],
    )
    refused(evaluate(world, out, test=bad), str(bad), "'x1'")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    refused(evaluate(world, out, test=empty), "no records")
    refused(evaluate(world, world.test), "overwrite")
    assert not out.exists()


def test_an_adapter_naming_another_base_runs_only_when_allowed(world, tmp_path):
    import shutil

    named = tmp_path / "named"
    shutil.copytree(world.bank / "e0", named)
    config = json.loads((named / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "org/other-7b"
    (named / "adapter_config.json").write_text(json.dumps(config))
    out = tmp_path / "eval.json"
    refused = evaluate(world, out, "--adapter", named)
    assert isinstance(refused.exception, InputError) and not out.exists()
    assert "trained on base model 'org/other-7b'" in str(refused.exception)
    allowed = evaluate(world, out, "--adapter", named, "--allow-other-base")
    assert allowed.exit_code == 0, allowed.output
    assert json.loads(out.read_text())["n"] == 4


def test_routing_diagnostics_of_a_mixture(world, mixture, tmp_path):
    out, routing = tmp_path / "eval.json", tmp_path / "routing.json"
    result = evaluate(world, out, "--moe", mixture, "--routing", routing)
    assert result.exit_code == 0, result.output
    data = json.loads(routing.read_text())
    assert len(data["usage"]) == len(data["layers"]) > 0 and data["tokens"] > 0
    for row in data["usage"]:
        assert sum(row) == pytest.approx(1.0, abs=1e-6)
    assert f"wrote {routing}" in result.output
    refused(evaluate(world, tmp_path / "e.json", "--routing", tmp_path / "r.json"), "--moe")
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "r.json").exists()
