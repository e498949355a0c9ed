"""Sharded K-center on 2-4 Ray actors picks exactly what `kcenter_greedy` picks, survives one
dead actor per shard and fails cleanly on a second death."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from taskexpert.cli import app
from taskexpert.errors import TaskexpertError
from taskexpert.recipes.common_options import RaySettings
from taskexpert.scaleout.kcenter import sharded_kcenter
from taskexpert.scaleout.select import ray_kcenter
from taskexpert.scaleout.shards import matrix_shards
from taskexpert.selection.kcenter import kcenter_greedy

CHUNK = 128  # small chunks, so 2-4 shards start on the one-process chunk grid


def points(n: int = 3000, dim: int = 12, seed: int = 0) -> np.ndarray:
    """Gaussian rows with a shared offset, exact duplicates and a block of equal rows (ties)."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, dim)) + 3.0).astype(np.float32)
    x[100:130] = x[7]
    x[2000:2040] = 0.25
    x[2500:2510] = np.round(x[2500:2510])
    return x


@pytest.mark.parametrize(
    ("actors", "metric", "case"),
    [
        (2, "euclidean", {"initial": [5, 2001, 2999, 101], "exclude": [8, 9, 10, 2002]}),
        (3, "cosine", {"seed": 3, "exclude": list(range(0, 3000, 7))}),
        (4, "euclidean", {}),
        (2, "cosine", {"initial": list(range(0, 3000, 11))}),  # several centre blocks of 128
    ],
)
def test_picks_equal_one_process(ray_local, actors, metric, case):
    x = points()
    expected = kcenter_greedy(x, 40, metric=metric, progress=False, chunk_size=CHUNK, **case)
    shards = matrix_shards(x, actors, CHUNK)
    assert len(shards) == actors
    got = sharded_kcenter(
        ray_local, shards, 40, metric=metric, progress=False, chunk_rows=CHUNK, **case
    )
    assert got == expected


def test_a_memory_mapped_half_precision_file_and_mass_ties(ray_local, tmp_path):
    x = points(2000, 8, seed=1)
    x[:1500] = x[0]  # far more near-ties than the re-rank takes (MAX_RERANK)
    path = tmp_path / "e.npy"
    np.save(path, x.astype(np.float16))
    matrix = np.load(path, mmap_mode="r")
    expected = kcenter_greedy(matrix, 30, progress=False, chunk_size=CHUNK)
    shards = matrix_shards(matrix, 3, CHUNK)
    assert all(shard.source == str(path) for shard in shards)  # actors map the file
    got = sharded_kcenter(ray_local, shards, 30, progress=False, chunk_rows=CHUNK)
    assert got == expected


def test_a_dead_actor_is_replaced_once_and_the_picks_stay_the_same(ray_local):
    x = points()
    expected = kcenter_greedy(x, 25, progress=False, chunk_size=CHUNK)
    killed = []

    def kill_once(driver, pick):
        if len(killed) == 0 and pick == expected[9]:
            ray_local.kill(driver.actors[1], no_restart=True)
            killed.append(pick)

    got = sharded_kcenter(
        ray_local, matrix_shards(x, 3, CHUNK), 25, progress=False, chunk_rows=CHUNK,
        on_pick=kill_once,
    )  # fmt: skip
    assert killed and got == expected


def test_a_shard_whose_actor_dies_twice_stops_the_run(ray_local):
    x = points()

    def kill_always(driver, pick):
        ray_local.kill(driver.actors[0], no_restart=True)

    with pytest.raises(TaskexpertError, match="rows 0..* died twice; nothing was written"):
        sharded_kcenter(
            ray_local, matrix_shards(x, 2, CHUNK), 10, progress=False, chunk_rows=CHUNK,
            on_pick=kill_always,
        )  # fmt: skip


def test_the_kcenter_verb_with_ray_local(ray_local, tmp_path):
    x = np.random.default_rng(2).normal(size=(6000, 8)).astype(np.float32)
    path = tmp_path / "e.npy"
    np.save(path, x)
    runner = CliRunner()
    outs = {}
    for name, extra in (("one", []), ("ray", ["--ray", "local", "--ray-actors", "2"])):
        out = tmp_path / f"{name}.json"
        args = ["kcenter", "--embeddings", path, "--k", 20, "--out", out, *extra, "--quiet"]
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        outs[name] = json.loads(out.read_text())
    assert outs["ray"]["picks"] == outs["one"]["picks"]
    assert outs["ray"]["ray"] == {"address": "local", "actors": 2}
    result = runner.invoke(app, ["kcenter", "--embeddings", str(path), "--k", "3", "--out",
                                 str(tmp_path / "h.json"), "--ray", "local", "--half"])  # fmt: skip
    assert result.exit_code != 0 and "--half does not run on Ray" in str(result.exception)


def test_ray_kcenter_cuts_whole_chunks(ray_local):
    x = np.random.default_rng(3).normal(size=(9000, 384)).astype(np.float32)  # 2730-row chunks
    settings = RaySettings(ray="local", ray_actors=3)
    assert ray_kcenter(settings, x, 5, progress=False) == kcenter_greedy(x, 5, progress=False)
