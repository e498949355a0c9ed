"""Kill -9 and resume, train-moe: a run SIGKILLed between or during its checkpoints and rerun
with --resume ends with the uninterrupted run's mixture, and never shows a half-written file."""

from __future__ import annotations

import json
import random

import pytest
import torch
from kill_resume import assert_no_partial_files, kill_midway, rerun
from moe_world import build_world
from safetensors.torch import load_file

from taskexpert.moe.train import work_dir

STEPS = 100
# a checkpoint every second step: kills land in a step, in a checkpoint write or between
ARGS = [
    "--max-steps", STEPS, "--batch-size", "4", "--micro-batch-size", "2",
    "--checkpoint-every", "2", "--lr", "1e-2", "--router-lr", "5e-2",
    "--router-init", "kshot", "--device", "cpu", "--quiet", "--resume",
]  # fmt: skip
# float32 weights after 120 steps: the same computation, so equal up to summation order
RTOL, ATOL = 1e-5, 1e-6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


def command(world, out) -> list:
    base = ["train-moe", "--base", world.base, "--experts", world.experts, "--data", world.data]
    return [*base, "--kshot", world.kshot, "--out", out, *ARGS]


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "moe"
    rerun(command(world, out))
    return out


def checkpoint_step(out) -> int:
    try:
        return json.loads((work_dir(out) / "checkpoint" / "progress.json").read_text())["step"]
    except (OSError, ValueError):
        return 0


def _where(out) -> str:
    work = work_dir(out)
    progress = work / "checkpoint" / "progress.json"
    step = json.loads(progress.read_text())["step"] if progress.is_file() else None
    leftovers = sorted(p.name for p in work.glob(".*.tmp")) if work.is_dir() else []
    return (
        f"checkpoint at step {step}, mixture written: {out.is_dir()}, "
        f"temp entries in the work dir: {leftovers}"
    )


@pytest.mark.parametrize(
    "seed, fresh_interpreter", [(0, False), pytest.param(1, True, marks=pytest.mark.slow)]
)
def test_a_killed_run_resumes_to_the_uninterrupted_mixture(
    world, reference, tmp_path, seed, fresh_interpreter
):
    ref_out = reference
    out = tmp_path / "moe"
    work = work_dir(out)
    rng = random.Random(seed)
    target = rng.randrange(2, STEPS - 40, 2)  # the checkpoint after which to kill
    kill = kill_midway(
        command(world, out),
        lambda: checkpoint_step(out) >= target,
        rng=rng,
        window=0.15,  # a few steps and checkpoint writes
        log=tmp_path / "killed.log",
    )
    kill.where = f"seed {seed}, after checkpoint {target}: {_where(out)}"
    print(kill)

    # (b) whatever is under a final name is whole; a checkpoint is all three files or absent
    assert assert_no_partial_files(tmp_path) > 0
    checkpoint = work / "checkpoint"
    if checkpoint.exists():
        names = {p.name for p in checkpoint.iterdir()}
        assert names == {"trainable.safetensors", "state.pt", "progress.json"}, names
    progress = checkpoint / "progress.json"  # absent only if killed while it was replaced
    resumed_step = json.loads(progress.read_text())["step"] if progress.is_file() else 0
    assert not out.exists()

    rerun_log = tmp_path / "rerun.log" if fresh_interpreter else None
    output = rerun(command(world, out), subprocess_log=rerun_log)
    assert f"{STEPS} steps" in output

    # (a) the resumed run continued from the checkpoint and ends with the reference's mixture
    summary = json.loads((out / "train_summary.json").read_text())
    expected = json.loads((ref_out / "train_summary.json").read_text())
    assert summary["train"]["resumed_from"] == resumed_step
    assert summary["train"]["steps"] == expected["train"]["steps"] == STEPS
    for key in ("first_loss", "final_loss"):
        assert summary["train"][key] == pytest.approx(expected["train"][key], rel=RTOL, abs=ATOL)
    assert json.loads((out / "moe_config.json").read_text()) == json.loads(
        (ref_out / "moe_config.json").read_text()
    )
    weights = load_file(str(out / "moe_model.safetensors"))
    ref_weights = load_file(str(ref_out / "moe_model.safetensors"))
    assert weights.keys() == ref_weights.keys()
    for name, tensor in ref_weights.items():
        torch.testing.assert_close(weights[name], tensor, rtol=RTOL, atol=ATOL, msg=name)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    ref_log = [json.loads(line) for line in (ref_out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [e["step"] for e in ref_log] == list(range(5, STEPS + 1, 5))
    for entry, ref_entry in zip(log, ref_log):
        assert entry["loss"] == pytest.approx(ref_entry["loss"], rel=RTOL, abs=ATOL)
    assert not work.exists()
