"""Same seed, same result: select-data, kcenter, select-experts and a short train-moe run twice,
each time in a fresh process with another PYTHONHASHSEED (set and dict order of strings change
between processes), and the outputs are compared: files byte for byte once timings are left
out, checkpoint tensors within rtol 1e-6 / atol 1e-7."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from moe_world import build_world, jsonl, records
from safetensors.torch import load_file

# Timing fields differ run to run by nature; everything else must not.
TIMING_KEYS = ("seconds", "seconds_per_pick", "timings_s", "tokens_per_second")

STAGES = """
import sys
from typer.testing import CliRunner
from taskexpert.cli import app

w, out = sys.argv[1], sys.argv[2]
stages = [
    ["select-data", "--pool", f"{w}/pool.jsonl", "--kshot", f"{w}/kshot.jsonl", "--budget", "6",
     "--out", f"{out}/selected.jsonl", "--no-cache", "--dedup", "0.95"],
    ["kcenter", "--embeddings", f"{w}/e.npy", "--k", "40", "--seed", "3",
     "--out", f"{out}/picks.json"],
    ["select-experts", "--base", f"{w}/base", "--bank", f"{w}/bank", "--kshot", f"{w}/kshot.jsonl",
     "--n", "2", "--max-new-tokens", "4", "--keep-below-base", "--rule", "paper",
     "--out", f"{out}/experts.json"],
    ["train-moe", "--base", f"{w}/base", "--experts", f"{out}/experts.json",
     "--data", f"{out}/selected.jsonl", "--kshot", f"{w}/kshot.jsonl", "--out", f"{out}/moe",
     "--max-steps", "3", "--batch-size", "4", "--micro-batch-size", "2", "--seed", "7"],
]
for args in stages:
    result = CliRunner().invoke(app, [*args, "--quiet"])
    if result.exit_code != 0:
        sys.exit(f"{args[0]} failed: {result.output}{result.exception!r}")
"""


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def read_json(run: Path, name: str):
    """The JSON with the run's own directory written as RUN (each run writes its own paths)."""
    return without_timings(json.loads((run / name).read_text().replace(str(run), "RUN")))


def run_stages(world: Path, out: Path, hash_seed: str) -> None:
    out.mkdir()
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "TASKEXPERT_QUIET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", STAGES, str(world), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_runs_with_the_same_seed_agree(tmp_path):
    world = build_world(tmp_path / "world")
    pool = records("p", 30)
    pool += [{"id": f"x{i}", "instruction": f"Name a colour, number {i}.", "output": "Red."}
             for i in range(10)]  # fmt: skip
    jsonl(world.root / "pool.jsonl", pool)
    rng = np.random.default_rng(0)
    np.save(world.root / "e.npy", rng.standard_normal((500, 16)).astype(np.float32))

    runs = [tmp_path / "run1", tmp_path / "run2"]
    for out, hash_seed in zip(runs, ["1", "2"]):
        run_stages(world.root, out, hash_seed)

    first, second = runs
    assert (first / "selected.jsonl").read_bytes() == (second / "selected.jsonl").read_bytes()
    for name in ["selected.summary.json", "picks.json", "experts.json"]:
        assert read_json(first, name) == read_json(second, name), name
    moe_files = sorted(p.name for p in (first / "moe").iterdir())
    assert moe_files == sorted(p.name for p in (second / "moe").iterdir())
    for name in moe_files:
        if name.endswith(".safetensors"):
            a, b = (load_file(run / "moe" / name) for run in runs)
            assert a.keys() == b.keys() and a
            for key in a:
                torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7, msg=key)
        elif name.endswith(".json"):
            assert read_json(first, f"moe/{name}") == read_json(second, f"moe/{name}"), name
        else:  # the training log: same losses, routing and loads at every logged step
            a, b = ((run / "moe" / name).read_bytes() for run in runs)
            assert a == b and a, name
