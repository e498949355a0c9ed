"""`taskexpert select-data` end to end through the typer app, and every bad-input case."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

import taskexpert.embed
from taskexpert import cli
from taskexpert.cli import app
from taskexpert.errors import InputError

runner = CliRunner()

POOL = [
    ("m1", "Tom has 5 apples and buys 7 more. How many apples does he have now?", "12", "math"),
    ("m2", "A box holds 24 pencils. How many pencils are in 5 boxes?", "120", "math"),
    ("m3", "Sara earns $12 an hour for 6 hours. How much does she earn?", "$72", "math"),
    ("c1", "Write a Python function that reverses a string.", "def r(s): return s[::-1]", "code"),
    ("c2", "Write a SQL query that counts the rows of table t.", "SELECT COUNT(*) FROM t;", "code"),
    ("t1", "Translate 'good morning' into French.", "Bonjour", "chat"),
    ("t2", "Name three primary colours.", "Red, yellow and blue.", "chat"),
    ("t3", "Write a haiku about autumn leaves.", "Red leaves drift down...", "chat"),
]
KSHOT = [
    {"id": "k1", "instruction": "Mary has 4 pears and eats 1. How many are left?", "output": "3"},
    {"id": "k2", "instruction": "Ben buys 3 pens at $2 each. What does he pay?", "output": "$6"},
]


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path):
    rows = [
        {"id": i, "instruction": q, "output": a, "source": s, "meta": {"n": n}}
        for n, (i, q, a, s) in enumerate(POOL)
    ]
    return jsonl(tmp_path / "pool.jsonl", rows), jsonl(tmp_path / "kshot.jsonl", KSHOT)


@pytest.fixture
def use_minilm(monkeypatch, minilm):
    """The CLI's `default` encoder is the session's already-loaded MiniLM."""
    monkeypatch.setattr(taskexpert.embed, "resolve_embedder", lambda spec, **_: minilm)


def run(*args):
    return runner.invoke(app, ["select-data", *map(str, args)])


def test_end_to_end(files, tmp_path, use_minilm):
    pool, kshot = files
    out = tmp_path / "run" / "selected.jsonl"
    cache = tmp_path / "cache"
    result = run("--pool", pool, "--kshot", kshot, "--budget", 3, "--cache", cache, "--out", out)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["source"] for r in rows] == ["math"] * 3
    originals = {r["id"]: r for r in map(json.loads, pool.read_text().splitlines())}
    for row in rows:
        assert {k: v for k, v in row.items() if k not in ("score", "input")} == originals[row["id"]]
        assert -1.0 <= row["score"] <= 1.0
    summary = json.loads((tmp_path / "run" / "selected.summary.json").read_text())
    assert json.loads(result.stdout) == summary
    assert summary["selected_per_source"] == {"math": 3}
    assert summary["pool_size"] == len(POOL) and summary["removed_duplicates"] == 0
    assert summary["cache"]["misses"] == len(POOL) + len(KSHOT)
    again = run("--pool", pool, "--kshot", kshot, "--budget", 3, "--cache", cache, "--out", out)
    assert json.loads(again.stdout)["cache"]["misses"] == 0


def test_several_pool_files_and_max_mode(files, tmp_path, use_minilm):
    pool, kshot = files
    lines = pool.read_text().splitlines()
    first = jsonl(tmp_path / "a.jsonl", map(json.loads, lines[:4]))
    second = jsonl(tmp_path / "b.jsonl", map(json.loads, lines[4:]))
    out = tmp_path / "sel.jsonl"
    args = ["--pool", first, "--pool", second, "--kshot", kshot, "--budget", 7, "--out", out]
    result = run(*args, "--mode", "max", "--no-cache")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["pool_files"] == [str(first), str(second)] and summary["mode"] == "max"
    assert summary["selected"] == 7 and "cache" not in summary


def _bad_cases(tmp_path, pool, kshot):
    """(name, arguments, expected message parts) for every bad-input case."""
    good = pool.read_text().splitlines()
    malformed = tmp_path / "malformed.jsonl"
    malformed.write_text("\n".join([good[0], good[1], '{"id": "x", "instruction": '][:3]) + "\n")
    missing = jsonl(
        tmp_path / "missing.jsonl", [json.loads(good[0]), {"id": "y", "instruction": "q"}]
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"id": "z", "instruction": "café", "output": "o"}\n'.encode("latin-1"))
    dup = jsonl(tmp_path / "dup.jsonl", [json.loads(good[0])])
    kshot_missing = jsonl(tmp_path / "kshot_missing.jsonl", [{"id": "k", "output": "o"}])
    base = ["--kshot", kshot, "--budget", 2]
    return [
        ("malformed", ["--pool", malformed, *base], [f"{malformed}:3", "malformed JSON"]),
        ("missing field", ["--pool", missing, *base], [f"{missing}:2", "field 'output'"]),
        (
            "kshot field",
            ["--pool", pool, "--kshot", kshot_missing, "--budget", 2],
            [f"{kshot_missing}:1", "field 'instruction'"],
        ),
        (
            "empty kshot",
            ["--pool", pool, "--kshot", empty, "--budget", 2],
            [str(empty), "no records"],
        ),
        ("empty pool", ["--pool", empty, *base], [str(empty), "no records"]),
        (
            "budget",
            ["--pool", pool, "--kshot", kshot, "--budget", 50],
            [str(pool), "field 'budget'", "exceeds the pool size 8"],
        ),
        ("budget zero", ["--pool", pool, "--kshot", kshot, "--budget", 0], ["budget"]),
        ("unreadable", ["--pool", tmp_path / "nope.jsonl", *base], ["nope.jsonl", "not found"]),
        ("directory", ["--pool", tmp_path, *base], [str(tmp_path), "not a regular file"]),
        ("not utf-8", ["--pool", latin1, *base], [str(latin1), "UTF-8"]),
        ("duplicate id", ["--pool", pool, "--pool", dup, *base], [f"{dup}:1", "duplicate id 'm1'"]),
        ("mode", ["--pool", pool, *base, "--mode", "mean"], ["field 'mode'"]),
        ("dedup", ["--pool", pool, *base, "--dedup", 1.5], ["field 'dedup'"]),
        (
            "encoder",
            ["--pool", pool, *base, "--encoder", tmp_path / "no-model"],
            ["encoder must be"],
        ),
    ]


CASES = [
    "malformed", "missing field", "kshot field", "empty kshot", "empty pool", "budget",
    "budget zero", "unreadable", "directory", "not utf-8", "duplicate id", "mode", "dedup",
    "encoder",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input(files, tmp_path, case):
    pool, kshot = files
    cases = {name: (args, parts) for name, args, parts in _bad_cases(tmp_path, pool, kshot)}
    args, parts = cases[case]
    out = tmp_path / "out" / "selected.jsonl"
    result = run(*args, "--out", out, "--cache", tmp_path / "cache")
    assert result.exit_code != 0
    assert isinstance(result.exception, InputError), result.exception
    message = str(result.exception)
    assert "\n" not in message
    for part in parts:
        assert part in message
    assert not out.exists() and not out.with_name("selected.summary.json").exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_output_must_not_overwrite_an_input(files, tmp_path):
    pool, kshot = files
    result = run("--pool", pool, "--kshot", kshot, "--budget", 2, "--out", pool)
    assert isinstance(result.exception, InputError) and "overwrite" in str(result.exception)
    assert len(pool.read_text().splitlines()) == len(POOL)


def test_console_prints_one_line_and_exits_1(files, tmp_path, monkeypatch, capsys):
    pool, kshot = files
    argv = ["taskexpert", "select-data", "--pool", str(pool), "--kshot", str(kshot)]
    argv += ["--budget", "99", "--out", str(tmp_path / "o.jsonl")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "budget 99" in err
