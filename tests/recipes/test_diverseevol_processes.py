"""DiverseEvol on two processes (`accelerate launch`, gloo on the CPU): rank 0 selects and
writes, both train each round in step, and the run equals the one-process run: the same rows
every round and the same adapters within float tolerance."""

from __future__ import annotations

import json

from processes import ONE, TWO, WEIGHT_TOLERANCE, max_difference, taskexpert
from safetensors.torch import load_file
from test_diverseevol import make_records, write_jsonl
from tiny_models import save_tiny_base


def test_two_gloo_processes_run_the_same_rounds_as_one(tmp_path):
    save_tiny_base(tmp_path / "base")
    pool = write_jsonl(tmp_path / "pool.jsonl", make_records(40, 0, "p"))
    common = [
        "diverseevol", "--base", tmp_path / "base", "--pool", pool, "--init", "8",
        "--per-round", "8", "--rounds", "1", "--epochs", "1", "--lr", "1e-2",
        "--batch-size", "4", "--micro-batch-size", "2", "--max-length", "64", "--quiet",
    ]  # fmt: skip
    taskexpert(ONE, *common, "--out", tmp_path / "one")
    two = taskexpert(TWO, *common, "--out", tmp_path / "two")
    assert two.stdout.count('"run_dir"') == 1  # rank 0 alone reports

    for index in ("00", "01"):
        rounds = [tmp_path / run / "rounds" / index for run in ("one", "two")]
        rows = [json.loads((r / "selection.json").read_text())["rows"] for r in rounds]
        assert rows[0] == rows[1]
        adapters = [load_file(r / "model" / "adapter_model.safetensors") for r in rounds]
        assert max_difference(*adapters) <= WEIGHT_TOLERANCE
