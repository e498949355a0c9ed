"""The optional selection modes on a fresh install: `--encoder static` and `--two-stage` run on
the packaged sample through the CLI, so a release of model2vec (or of what its distillation
needs) that breaks them fails here, not in a user's run.

The static encoder is distilled from MiniLM once per session (about 30 s on two cores)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from taskexpert.cli import app
from taskexpert.data import SAMPLE_KSHOT, SAMPLE_POOL

runner = CliRunner()
MATH_SOURCES = ("gsm8k", "aqua")
BUDGET = 20


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """One cache root for the session, so the distillation runs once."""
    return tmp_path_factory.mktemp("static_encoder_cache")


def select(tmp_path, model_cache, monkeypatch, *options: str) -> dict:
    monkeypatch.setenv("TASKEXPERT_CACHE", str(model_cache))
    out = tmp_path / "selected.jsonl"
    args = ["select-data", "--pool", str(SAMPLE_POOL), "--kshot", str(SAMPLE_KSHOT)]
    result = runner.invoke(app, [*args, "--budget", str(BUDGET), "--out", str(out), *options])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == BUDGET
    return json.loads(out.with_name("selected.summary.json").read_text())


def math_share(summary: dict) -> float:
    per_source = summary["selected_per_source"]
    return sum(n for s, n in per_source.items() if s.endswith(MATH_SOURCES)) / BUDGET


def test_static_encoder_selects_the_kshot_task(tmp_path, model_cache, monkeypatch):
    summary = select(tmp_path, model_cache, monkeypatch, "--encoder", "static")
    assert summary["encoder"].startswith("m2v-")
    assert math_share(summary) >= 0.8, summary["selected_per_source"]


def test_two_stage_shortlists_then_reranks(tmp_path, model_cache, monkeypatch):
    summary = select(tmp_path, model_cache, monkeypatch, "--two-stage", "--shortlist-factor", "5")
    assert summary["shortlist_encoder"].startswith("m2v-")
    assert summary["shortlist_size"] == 5 * BUDGET and not summary["encoder"].startswith("m2v-")
    assert math_share(summary) >= 0.8, summary["selected_per_source"]
