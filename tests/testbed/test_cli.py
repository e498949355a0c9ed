from typer.testing import CliRunner

from taskexpert.cli import app


def test_build_verb_prints_the_baseline_table(micro_testbed):
    result = CliRunner().invoke(
        app, ["testbed", "build", "--out", str(micro_testbed.root), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert "kshot_lora" in result.output and "calibration" in result.output
    assert "testbed micro seed 0" in result.output


def test_build_verb_rejects_an_unknown_preset(tmp_path):
    from taskexpert.errors import InputError

    result = CliRunner().invoke(
        app, ["testbed", "build", "--out", str(tmp_path / "x"), "--preset", "huge"]
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, InputError)
    assert "unknown preset" in str(result.exception)
