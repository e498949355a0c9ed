"""recipes.report and the `report` verb: `taskexpert run` leaves report.html and report.md in
its directory, the verb rebuilds them (or writes them elsewhere), a failed report never fails
a run, and bad input is one clear error."""

from __future__ import annotations

import logging

from typer.testing import CliRunner

from taskexpert.cli import app
from taskexpert.recipes.report import ReportConfig, run_report, write_run_report
from taskexpert.report.collect import collect

runner = CliRunner()


def test_run_method_writes_the_report_beside_the_verdict(report_run):
    page = (report_run / "report.html").read_text(encoding="utf-8")
    text = (report_run / "report.md").read_text(encoding="utf-8")
    winner = collect(report_run).verdict.winner
    assert page.startswith("<!DOCTYPE html>") and f"Winner: {winner}." in page
    assert "## Verdict" in text and f"Winner: {winner}." in text
    assert not [p.name for p in report_run.iterdir() if p.name.endswith(".tmp")]


def test_run_report_rewrites_both_files(run_copy):
    (run_copy / "report.html").write_text("old")
    html_path, md_path = run_report(run_copy)
    assert (html_path, md_path) == (run_copy / "report.html", run_copy / "report.md")
    assert html_path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_a_report_failure_is_logged_and_the_run_stands(tmp_path, caplog):
    (tmp_path / "manifest.json").write_text("{not json")
    (tmp_path / "report.html").write_text("from an earlier run")  # must not outlive it
    with caplog.at_level(logging.ERROR, logger="taskexpert.recipes.report"):
        assert write_run_report(tmp_path) is None
    assert "taskexpert report" in caplog.text and "not valid JSON" in caplog.text
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "report.md").exists()


def test_the_verb_writes_to_out(run_copy, tmp_path):
    out = tmp_path / "elsewhere"
    result = runner.invoke(app, ["report", str(run_copy), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'report.html'}" in result.output
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert ReportConfig().out is None  # the default: the run directory itself


def test_the_verb_refuses_a_directory_that_is_not_a_run(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code != 0
    assert "not a taskexpert run directory" in str(result.exception or result.output)


def test_the_run_verb_names_the_report(report_run):
    from taskexpert.commands.run import report
    from taskexpert.recipes.run import RunResult
    from taskexpert.verdict import Verdict

    verdict = Verdict.model_validate_json((report_run / "verdict.json").read_text())
    split = {"source": "test file", "kshot": 8, "test": 6}
    result = RunResult(verdict, report_run, report_run / "final", [], [], split)
    assert f"report: {report_run / 'report.html'} (and report.md)" in report(result)
