"""Behaviour held fixed across restructuring: on the micro testbed, the verbs' picks,
experts.json, training losses, routing and evaluation numbers equal a recorded run.

The recorded values belong to one micro build: its base weights' hash is stored beside them.
Another machine's numerics can build other weights, and then the recorded values do not apply
and the test says so (skip). Refresh after an intended change with
`TASKEXPERT_UPDATE_GOLDEN=1 pytest tests/test_golden_micro.py` and say why in the commit."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from taskexpert.cli import app

GOLDEN = Path(__file__).parent / "fixtures" / "golden" / "micro.json"
TARGET = "mc_add_quiz"
REL, ABS = 1e-4, 1e-6  # floats: a summation-order change moves digits past the fourth
# ...except after optimizer steps, which carry it further: with the same base weights and
# picks, the loss after train-moe's 4 steps differed by 4.4e-4 (relative) on another machine
REL_BY_PATH = {".train.final_loss": 1e-3}


def cli(*args) -> None:
    result = CliRunner().invoke(app, [*map(str, args), "--quiet"])
    assert result.exit_code == 0, f"{args[0]}: {result.output}{result.exception!r}"


def base_hash(testbed) -> str:
    digest = hashlib.sha256()
    for path in sorted(testbed.base_dir.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run_pipeline(testbed, out: Path) -> dict:
    kshot, test = testbed.kshot_path(TARGET), testbed.test_path(TARGET)
    base = testbed.base_dir
    cli("select-experts", "--base", base, "--bank", testbed.bank_dir, "--kshot", kshot,
        "--n", 2, "--max-new-tokens", 12, "--device", "cpu", "--out", out / "experts.json",
        "--rule", "paper")  # fmt: skip
    # (--rule paper: the micro adapters barely train, and the default rule keeps one)
    # the torch encoder, as recorded: the CPU default (int8 ONNX, exported and quantised on
    # the machine) ranked the 4th and 5th picks the other way round (cosines 0.898 and 0.896
    # against the K-shot) on another machine with the same base weights
    cli("select-data", "--pool", testbed.pool_path, "--kshot", kshot, "--budget", 24,
        "--encoder", "default", "--no-cache", "--device", "cpu",
        "--out", out / "selected.jsonl")  # fmt: skip
    cli("train-moe", "--base", base, "--experts", out / "experts.json", "--data",
        out / "selected.jsonl", "--kshot", kshot, "--max-steps", 4, "--batch-size", 4,
        "--micro-batch-size", 2, "--lr", "1e-3", "--device", "cpu",
        "--out", out / "moe")  # fmt: skip
    cli("evaluate", "--base", base, "--moe", out / "moe", "--test", test, "--device", "cpu",
        "--max-new-tokens", 12, "--out", out / "eval.json")  # fmt: skip
    experts = json.loads((out / "experts.json").read_text())
    summary = json.loads((out / "moe" / "train_summary.json").read_text())
    log = [json.loads(line) for line in (out / "moe" / "train_log.jsonl").read_text().splitlines()]
    evaluation = json.loads((out / "eval.json").read_text())
    return {
        "chosen": experts["chosen"],
        "rejected": sorted(experts["rejected"]),
        "scores": {
            name: {"em": row["em"], "rppl": row["rppl"]} for name, row in experts["scores"].items()
        },
        "selected": [json.loads(line)["id"] for line in (out / "selected.jsonl").open()],
        "train": {k: summary["train"][k] for k in ("steps", "first_loss", "final_loss")},
        "router_entropy": [row["router_entropy"] for row in log],
        "eval": {k: evaluation[k] for k in ("n", "correct", "exact_match")},
        "multiple_choice_accuracy": evaluation.get("multiple_choice_accuracy"),
    }


def assert_matches(got, expected, where: str = "") -> None:
    """Equal structure and discrete values; floats within REL/ABS."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), where
        for key in expected:
            assert_matches(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected)):
            assert_matches(a, b, f"{where}[{i}]")
    elif isinstance(expected, float):
        rel = REL_BY_PATH.get(where, REL)
        assert got == pytest.approx(expected, rel=rel, abs=ABS), where
    else:
        assert got == expected, where


def test_the_micro_pipeline_matches_the_recorded_run(micro_testbed, tmp_path):
    got = run_pipeline(micro_testbed, tmp_path)
    build = base_hash(micro_testbed)
    if os.environ.get("TASKEXPERT_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps({"base_sha256": build, **got}, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())
    if golden.pop("base_sha256") != build:
        pytest.skip("this machine built other micro base weights: the recorded run does not apply")
    assert_matches(got, golden)
