"""`taskexpert targets make` and `taskexpert bank build` through the typer app."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from taskexpert.cli import app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
runner = CliRunner()


def test_targets_make_cli(tmp_path):
    data = tmp_path / "data"
    for folder in ("llm-foundry-eval", "rocket-arc-kshot", "gsm8k"):
        shutil.copytree(FIXTURES / folder, data / folder)
    args = ["targets", "make", "--data", str(data), "--kshot", "2", "--gsm8k-test", "2"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "t"), "--target", "boolq"])
    assert result.exit_code == 0, result.output
    assert "boolq" in result.output and "K-shot    2  test     2" in result.output
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["boolq", "targets.json"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "u"), "--kshot", "50"])
    assert result.exit_code != 0 and "asked for 50 items" in str(result.exception)


def test_bank_build_cli_refuses_an_unknown_source_before_loading(tmp_path):
    args = ["bank", "build", "--from", "nope", "--data", str(FIXTURES)]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "bank")])
    assert result.exit_code != 0 and "unknown source 'nope'" in str(result.exception)
    assert not (tmp_path / "bank").exists()
