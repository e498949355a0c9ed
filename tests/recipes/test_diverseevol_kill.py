"""Kill -9 and resume, diverseevol: a run SIGKILLed anywhere in its rounds (embedding, K-center,
training between checkpoints, writing a round) leaves only whole files and its lock behind,
and the rerun ends with the uninterrupted run's subsets and models."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from kill_resume import assert_json_close, assert_no_partial_files, kill_midway, rerun, without
from safetensors.torch import load_file
from tiny_models import save_tiny_base

from taskexpert import rundir

ROUNDS = 3
# the same computation in both runs: equal up to float32 summation order
RTOL, ATOL = 1e-5, 1e-6
TIMINGS = {"seconds", "seconds_select", "seconds_embed", "seconds_eval", "tokens_per_second"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A saved tiny base and a 60-record pool of three easy families."""
    root = tmp_path_factory.mktemp("diverseevol_kill")
    save_tiny_base(root / "base")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        a, b = (int(x) for x in rng.integers(0, 10, 2))
        word = "".join(rng.choice(list("abcdef"), int(rng.integers(2, 7))))
        instruction, answer = [
            (f"Add {a} and {b}.", str(a + b)),
            (f"Reverse {word}.", word[::-1]),
            (f"Upper-case {word}.", word.upper()),
        ][i % 3]
        rows.append({"id": f"p{i}", "instruction": instruction, "output": f"It is {answer}."})
    (root / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def command(world, out) -> list:
    return [
        "diverseevol", "--base", world / "base", "--pool", world / "pool.jsonl", "--out", out,
        "--init", "10", "--per-round", "10", "--rounds", ROUNDS, "--epochs", "3",
        "--batch-size", "4", "--max-length", "64", "--lr", "0.01", "--embed-batch-size", "16",
        "--checkpoint-every", "2", "--threads", "1", "--device", "cpu",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    rerun(command(world, out))
    return out


def _json(path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def kill_points(run) -> list[tuple[str, object]]:
    """(description, test on the run directory) of the points a run passes, in order: round
    r's pool embedded under round r-1's model (r >= 1), round r's training checkpoints (the
    rounds train 9, 15, 24 and 30 steps), round r finished."""
    scratch = run / "scratch"

    def embedded(r: int):
        return lambda: _json(scratch / "pool_embeddings.json").get("round") == r

    def checkpoint(r: int, step: int):
        path = scratch / f"train-{r:02d}" / "checkpoint" / "progress.json"
        return lambda: _json(path).get("step", 0) >= step

    points = []
    for r, steps in enumerate((9, 15, 24, 30)):
        if r:
            points.append((f"round {r} pool embedded", embedded(r)))
        points += [(f"round {r} checkpoint {k}", checkpoint(r, k)) for k in range(2, steps - 6, 4)]
        if r < ROUNDS:
            points.append(
                (f"round {r} finished", (run / "rounds" / f"{r:02d}" / rundir.MARKER).is_file)
            )
    return points


def finished_rounds(run) -> list[str]:
    rounds = run / "rounds"
    return sorted(p.name for p in rounds.iterdir() if p.name.isdigit()) if rounds.is_dir() else []


def _where(run) -> str:
    checkpoints = sorted(run.glob("scratch/train-*/checkpoint/progress.json"))
    steps = [f"{p.parts[-3]} step {json.loads(p.read_text())['step']}" for p in checkpoints]
    temps = sorted(p.name for p in (run / "rounds").glob(".*.tmp"))
    embedded = (run / "scratch" / "pool_embeddings.json").is_file()
    return (
        f"finished rounds {finished_rounds(run)}, checkpoints {steps or 'none'}, round being "
        f"written {temps or 'none'}, pool embedded for the next round: {embedded}"
    )


def read(path):
    return json.loads(path.read_text())


@pytest.mark.parametrize(
    "seed, fresh_interpreter", [(0, False), pytest.param(1, True, marks=pytest.mark.slow)]
)
def test_a_killed_run_resumes_to_the_uninterrupted_rounds(
    world, reference, tmp_path, seed, fresh_interpreter
):
    ref_run = reference
    run = tmp_path / "run"
    rng = random.Random(seed)
    point, reached = rng.choice(kill_points(run))
    kill = kill_midway(
        command(world, run),
        reached,
        rng=rng,
        window=0.1,  # a few training steps, an embedding pass or a round's write
        log=tmp_path / "killed.log",
    )
    kill.where = f"seed {seed}, after {point}: {_where(run)}"
    print(kill)

    # (b) whole files only; every round under its final name passes its checksums; the lock
    # file stays behind, but its lock died with the process
    assert assert_no_partial_files(run) > 0
    done = finished_rounds(run)
    for name in done:
        rundir.check_marker(run / "rounds" / name, {"round": int(name)})
    assert len(done) <= ROUNDS, "the run finished before the kill"
    assert (run / ".lock").is_file()

    output = rerun(
        command(world, run),
        subprocess_log=tmp_path / "rerun.log" if fresh_interpreter else None,
    )
    assert f'"resumed_after_rounds": {len(done)}' in output

    # (a) every round's subset, selection, model and summary as in the uninterrupted run
    assert finished_rounds(run) == finished_rounds(ref_run) == ["00", "01", "02", "03"]
    for name in finished_rounds(ref_run):
        ours, theirs = run / "rounds" / name, ref_run / "rounds" / name
        assert (ours / "subset.jsonl").read_bytes() == (theirs / "subset.jsonl").read_bytes()
        selection, ref_selection = read(ours / "selection.json"), read(theirs / "selection.json")
        assert selection["rows"] == ref_selection["rows"]
        assert without(selection, TIMINGS) == without(ref_selection, TIMINGS)
        weights = load_file(str(ours / "model" / "adapter_model.safetensors"))
        ref_weights = load_file(str(theirs / "model" / "adapter_model.safetensors"))
        assert weights.keys() == ref_weights.keys()
        for key, tensor in ref_weights.items():
            torch.testing.assert_close(weights[key], tensor, rtol=RTOL, atol=ATOL, msg=key)
        summary = without(read(ours / "summary.json"), TIMINGS | {"resumed_from"})
        ref_summary = without(read(theirs / "summary.json"), TIMINGS | {"resumed_from"})
        assert_json_close(summary, ref_summary, rtol=RTOL, atol=ATOL)
    curve, ref_curve = read(run / "curve.json"), read(ref_run / "curve.json")
    assert_json_close(without(curve, TIMINGS), without(ref_curve, TIMINGS), rtol=RTOL, atol=ATOL)
    assert not (run / "scratch").exists() and not list((run / "rounds").glob(".*"))
