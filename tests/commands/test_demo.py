"""`taskexpert demo` on the packaged sample (no ../shared needed)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from typer.testing import CliRunner

import taskexpert.embed
from taskexpert.cli import app
from taskexpert.commands.demo import format_report
from taskexpert.data import SAMPLE_KSHOT, SAMPLE_POOL
from taskexpert.records import load_records

runner = CliRunner()


class HashEmbedder:
    """Fast stand-in for MiniLM: pseudo-random unit vectors seeded by the text."""

    name, dim = "hash-demo", 16

    def embed(self, texts, batch_size=64, progress=True):
        rows = [
            np.random.default_rng(int(hashlib.sha1(t.encode()).hexdigest()[:8], 16)).normal(size=16)
            for t in texts
        ]
        return taskexpert.embed.l2_normalize(np.array(rows))


def test_sample_is_packaged_and_valid():
    assert len(load_records(SAMPLE_POOL)) >= 100
    assert {r.source for r in load_records(SAMPLE_KSHOT)} == {"gsm8k"}


def test_demo_writes_the_run_and_prints_the_mix(tmp_path, monkeypatch):
    monkeypatch.setattr(
        taskexpert.embed, "resolve_embedder", lambda s, device="auto": HashEmbedder()
    )
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--budget", 25, "--cache", tmp_path])
    assert result.exit_code == 0, result.output
    assert len((out / "selected.jsonl").read_text().splitlines()) == 25
    summary = json.loads((out / "selected.summary.json").read_text())
    assert "source mix:" in result.stdout and "timings:" in result.stdout
    for source in summary["selected_per_source"]:
        assert source in result.stdout


def test_format_report_shares():
    summary = {
        "selected": 4,
        "pool_size": 10,
        "kshot_size": 2,
        "encoder": "enc",
        "selected_per_source": {"math": 3, "code": 1},
        "dedup_threshold": 0.9,
        "removed_duplicates": 1,
        "vendi_score": 2.5,
        "timings_s": {"embed_kshot_s": 0.1, "total_s": 1.0},
    }
    text = format_report(summary)
    assert "math      3   75.0%" in text and "code      1   25.0%" in text
    assert "total 1.00s" in text and "Vendi score of the selection: 2.5" in text


@pytest.mark.slow
def test_demo_with_the_real_encoder_selects_math(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--cache", tmp_path / "cache"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "selected.summary.json").read_text())
    math = sum(
        n for s, n in summary["selected_per_source"].items() if s.endswith(("gsm8k", "aqua"))
    )
    assert math / summary["selected"] >= 0.9
