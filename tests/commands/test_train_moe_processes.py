"""train-moe on two processes (`accelerate launch`, gloo on the CPU) ends with the same mixture
as on one: each process takes every other micro-batch and DDP averages their gradients, so
the optimizer sees the same batches (the global batch size is kept, see MoeTrainConfig)."""

from __future__ import annotations

import json

import pytest
from moe_world import build_world
from processes import ONE, TWO, WEIGHT_TOLERANCE, max_difference, taskexpert
from safetensors.torch import load_file

FLAGS = ["--max-steps", "4", "--batch-size", "4", "--micro-batch-size", "2", "--lr", "1e-3",
         "--seed", "0", "--quiet"]  # fmt: skip


def test_two_gloo_processes_train_the_same_mixture_as_one(tmp_path):
    world = build_world(tmp_path)
    common = ["train-moe", "--base", world.base, "--experts", world.experts, "--data", world.data]
    taskexpert(ONE, *common, "--out", tmp_path / "one", *FLAGS)
    two = taskexpert(TWO, *common, "--out", tmp_path / "two", *FLAGS)
    assert two.stdout.count("trained a mixture") == 1  # rank 0 alone reports and writes

    weights = [load_file(tmp_path / run / "moe_model.safetensors") for run in ("one", "two")]
    assert max_difference(*weights) <= WEIGHT_TOLERANCE

    def losses(run):
        log = (tmp_path / run / "train_log.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in log]

    assert losses("two") == pytest.approx(losses("one"), abs=1e-5)  # averaged over processes
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["train"]["steps"] == 4
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())
