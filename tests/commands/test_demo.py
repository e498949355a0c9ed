"""`taskexpert demo`, `taskexpert run` and `taskexpert config example` through the CLI, on the
micro testbed (the demo's own preset takes minutes to build; `make demo` runs that one)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from taskexpert.cli import app
from taskexpert.recipes.demo import DEMO_EPOCHS
from taskexpert.recipes.run_config import load_run_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [*map(str, args), "--quiet"], prog_name="taskexpert")


def test_demo_runs_the_method_and_prints_the_verdict(micro_testbed, tmp_path):
    out = tmp_path / "demo"
    args = ("demo", "--out", out, "--testbed", micro_testbed.root, "--preset", "micro",
            "--target", "mc_add_quiz", "--seed", 0, "--budget", 24)  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    verdict = json.loads((out / "verdict.json").read_text())
    assert "the mixture" in result.output and verdict["sentence"] in result.output
    assert f"winner ({verdict['winner']})" in result.output
    config = tmp_path / "demo.yaml"
    assert load_run_config(config).train.epochs == DEMO_EPOCHS  # the demo's own, not 5
    again = invoke("run", config, "--out", out)  # the written config reruns as it is
    assert again.exit_code == 0, again.output
    assert "stages run: 0," in again.output


def test_config_example_prints_a_loadable_config(micro_testbed, tmp_path):
    generic = invoke("config", "example")
    assert generic.exit_code == 0 and "budget: 1000" in generic.output
    result = invoke("config", "example", "--testbed", micro_testbed.root, "--target", "count_chat")
    assert result.exit_code == 0, result.output
    path = tmp_path / "run.yaml"
    path.write_text(result.output)
    config = load_run_config(path)
    assert config.kshot == micro_testbed.kshot_path("count_chat")
    alone = invoke("config", "example", "--target", "count_chat")
    assert "together" in str(alone.exception)


def test_run_with_a_bad_config_is_one_error_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("base: smollm2\nbank: b\nkshot: k.jsonl\npools: [p.jsonl]\nbudgett: 5\n")
    result = invoke("run", path, "--out", tmp_path / "out")
    assert result.exit_code != 0 and "budgett" in str(result.exception)
    assert not (tmp_path / "out").exists()


def test_demo_rebuilds_a_testbed_of_an_older_recipe(micro_testbed, tmp_path, monkeypatch):
    """The demo's testbed is a cache: after an update changed the recipe, the demo rebuilds it
    (a plain `testbed build` refuses and names --force)."""
    import shutil

    from taskexpert.errors import InputError
    from taskexpert.recipes.demo import run_demo
    from taskexpert.testbed import build_testbed
    from taskexpert.testbed.build_state import built_by_older_recipe, is_complete

    old = tmp_path / "tb"
    shutil.copytree(micro_testbed.root, old)
    stored = json.loads((old / "run.json").read_text())
    stored["identity"]["recipe"] = "0" * 16
    (old / "run.json").write_text(json.dumps(stored))
    assert built_by_older_recipe(old, "micro", 0)
    assert not built_by_older_recipe(old, "micro", 1)  # another seed: not this build
    with pytest.raises(InputError, match="older testbed recipe"):
        build_testbed(old, "micro", 0, progress=False)
    monkeypatch.setattr("taskexpert.recipes.run.run_method", lambda *a, **k: "ran")
    result, _ = run_demo(tmp_path / "demo", old, preset="micro", target="mc_add_quiz")
    assert result == "ran"
    assert is_complete(old, "micro", 0) and not built_by_older_recipe(old, "micro", 0)
