"""A micro run's routing diagnostics (routing.json beside the mixture's eval) and
`taskexpert export`: the winner copied, a collapsed mixture folded into one PEFT LoRA that
matches it, an uncollapsed one refused unless --force."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from test_run import SMALL, micro_config
from typer.testing import CliRunner

from taskexpert.errors import InputError
from taskexpert.recipes.export import ExportConfig, run_export
from taskexpert.recipes.run import run_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROUTING_KEYS = {"experts", "layers", "usage", "entropy", "max_entropy", "collapsed",
                "dominant_share", "warning", "tokens"}  # fmt: skip
EXACT = 1e-4  # max |logit difference| of a fold where the router always picks one expert


@pytest.fixture(scope="module")
def micro_run(micro_testbed, tmp_path_factory):
    """base + a top-1 mixture, one seed."""
    out = tmp_path_factory.mktemp("run") / "run"
    train = {**SMALL["train"], "top_k": 1}
    config = micro_config(micro_testbed, methods=["base", "moe"], seeds=[0], train=train)
    run_method(config, out, progress=False)
    return out


def _copy(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def test_the_run_writes_routing_json_beside_the_mixtures_eval(micro_run):
    routing = json.loads((micro_run / "stages/eval/moe-seed0/routing.json").read_text())
    assert set(routing) == ROUTING_KEYS
    config = json.loads((micro_run / "stages/train/moe-seed0/model/moe_config.json").read_text())
    assert routing["experts"] == [e["name"] for e in config["experts"]]
    assert sorted(routing["layers"]) == sorted(config["modules"])
    n = len(routing["experts"])
    assert routing["max_entropy"] == pytest.approx(math.log(n), abs=1e-9)
    assert len(routing["usage"]) == len(routing["entropy"]) == len(routing["dominant_share"])
    for row, entropy, share in zip(routing["usage"], routing["entropy"], routing["dominant_share"]):
        assert len(row) == n
        assert sum(row) == pytest.approx(1.0, abs=1e-6)
        assert 0 <= entropy <= routing["max_entropy"] + 1e-9
        assert share == pytest.approx(max(row), abs=1e-12)
    assert routing["tokens"] > 0
    assert (routing["warning"] is None) == (not routing["collapsed"])
    assert not (micro_run / "stages/eval/base/routing.json").exists()


def test_export_without_merge_copies_the_winner(micro_run, tmp_path):
    run = _copy(micro_run, tmp_path)
    summary = run_export(run, None, ExportConfig())
    winner = json.loads((run / "final/winner.json").read_text())
    assert json.loads((run / "export/winner.json").read_text()) == winner
    assert summary["method"] == winner["method"] and summary["mode"] == "winner"
    with pytest.raises(InputError, match="overwrite part of the run"):
        run_export(run, run / "final", ExportConfig())
    with pytest.raises(InputError, match="not a taskexpert run directory"):
        run_export(tmp_path, None, ExportConfig())


def test_the_export_command_prints_the_winners_cautions(micro_run, tmp_path):
    from taskexpert.cli import app

    run = _copy(micro_run, tmp_path)
    path = run / "final/winner.json"
    winner = json.loads(path.read_text())
    caution = "the winner is not shown to improve on the base model: (planted)"
    winner["verdict"]["cautions"] = [caution]
    path.write_text(json.dumps(winner))
    result = CliRunner().invoke(app, ["export", str(run)])
    assert result.exit_code == 0, result.output
    assert f"caution: {caution}" in result.output.splitlines()
    del winner["verdict"]  # a winner.json written before the verdict was kept beside it
    path.write_text(json.dumps(winner))
    result = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "old")])
    assert result.exit_code == 0, result.output
    assert "caution" not in result.output


def _zero_routers(run):
    """Every router weight 0: ties, so top-1 sends every token to the same expert."""
    from safetensors.torch import load_file, save_file

    weights = run / "stages/train/moe-seed0/model/moe_model.safetensors"
    tensors = load_file(str(weights))
    tensors = {k: v.zero_() if k.endswith("router.weight") else v for k, v in tensors.items()}
    save_file(tensors, str(weights), metadata={"format": "pt"})
    (run / "stages/eval/moe-seed0/routing.json").unlink()  # measured again by the export


def test_merge_folds_a_collapsed_mixture_into_a_matching_lora(micro_run, tmp_path):
    run = _copy(micro_run, tmp_path)
    _zero_routers(run)
    summary = run_export(run, None, ExportConfig(merge=True, check_items=4))
    assert summary["collapsed"] and not summary["forced"]
    assert summary["logit_difference"]["max_abs"] < EXACT
    assert summary["logit_difference"]["tokens"] > 0
    out = run / "export-merged"
    written = json.loads((out / "export.json").read_text())
    assert written["logit_difference"] == summary["logit_difference"]
    assert json.loads((out / "routing.json").read_text())["collapsed"]
    from taskexpert.bank import load_adapter

    assert load_adapter(out / "adapter").ranks  # a valid PEFT LoRA


def test_merge_refuses_uncollapsed_routing_unless_forced(micro_run, tmp_path):
    run = _copy(micro_run, tmp_path)
    path = run / "stages/eval/moe-seed0/routing.json"
    routing = json.loads(path.read_text())
    n = len(routing["experts"])
    spread = {**routing, "usage": [[1 / n] * n for _ in routing["layers"]]}
    path.write_text(json.dumps(spread))
    with pytest.raises(InputError, match="did not collapse.*--force"):
        run_export(run, None, ExportConfig(merge=True))
    assert not (run / "export-merged").exists()
    from taskexpert.cli import app

    result = CliRunner().invoke(app, ["export", str(run), "--merge", "--force", "-q"])
    assert result.exit_code == 0, result.output
    assert "NOT collapsed (--force)" in result.output and "logit difference" in result.output
    summary = json.loads((run / "export-merged/export.json").read_text())
    assert summary["forced"] and not summary["collapsed"]
    assert summary["logit_difference"]["max_abs"] >= summary["logit_difference"]["mean_abs"] >= 0


def test_bad_export_requests_are_refused_and_write_nothing(micro_run, tmp_path):
    run = _copy(micro_run, tmp_path)
    with pytest.raises(InputError, match="--force only applies to --merge"):
        run_export(run, None, ExportConfig(force=True))
    with pytest.raises(InputError, match="no seed 7"):
        run_export(run, None, ExportConfig(merge=True, seed=7))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not an earlier export"):
        run_export(run, tmp_path / "mine", ExportConfig())
    assert (tmp_path / "mine" / "keep.txt").read_text() == "mine"
    assert not (run / "export").exists() and not (run / "export-merged").exists()
