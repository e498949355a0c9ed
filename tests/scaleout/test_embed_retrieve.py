"""Ray Data embedding shards (equal to one process within 1e-6, resumable per shard) and
sharded retrieval + global dedup (the one-process selection exactly), and select-data --ray."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from taskexpert.cli import app
from taskexpert.embed import l2_normalize
from taskexpert.records import Record, load_records, write_records
from taskexpert.scaleout.embed import embed_to_shards
from taskexpert.scaleout.select import select_from_shards
from taskexpert.scaleout.shards import matrix_shards, shard_name
from taskexpert.selection.retrieve import select_data

SAMPLE = Path(__file__).parents[2] / "src" / "taskexpert" / "data" / "sample"


def test_embedding_shards_equal_one_process_and_resume_per_shard(ray_local, minilm, tmp_path):
    texts = [r.text for r in load_records(SAMPLE / "pool.jsonl")[:60]]
    shards, dim, counts = embed_to_shards(
        ray_local, texts, tmp_path, "default", actors=2, device="cpu", shard_rows=20,
        progress=False,
    )  # fmt: skip
    assert counts == {"embedded": 3, "reused": 0} and dim == minilm.dim
    sharded = np.concatenate([s.open() for s in shards])
    assert np.abs(sharded - minilm.embed(texts, progress=False)).max() < 1e-6
    again = embed_to_shards(ray_local, texts, tmp_path, actors=2, shard_rows=20, progress=False)
    assert again[2] == {"embedded": 0, "reused": 3}
    (tmp_path / shard_name(1)).unlink()  # a run killed before shard 1 was written
    texts[45] += " (edited)"  # and a text of shard 2 changed since
    _, _, counts = embed_to_shards(
        ray_local, texts, tmp_path, actors=1, shard_rows=20, progress=False
    )
    assert counts == {"embedded": 2, "reused": 1}
    assert np.array_equal(np.load(tmp_path / shard_name(0)), sharded[:20])


class Lookup:
    """An embedder returning fixed vectors by text (both paths then embed identically)."""

    name, dim = "lookup", 16

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def embed(self, texts, batch_size: int = 64, progress: bool = True) -> np.ndarray:
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


@pytest.mark.parametrize("mode", ["centroid", "max"])
def test_sharded_retrieval_and_dedup_equal_one_process(ray_local, mode):
    rng = np.random.default_rng(0)
    n = 700
    vectors = rng.normal(size=(n, 16)).astype(np.float32)
    anchor = rng.normal(size=16).astype(np.float32)
    near = rng.choice(n, 200, replace=False)  # close to the K-shot: many near-duplicates
    vectors[near] = anchor + 0.05 * rng.normal(size=(200, 16)).astype(np.float32)
    vectors[near[:10]] = vectors[near[10]]  # exact duplicates across shards
    pool = [Record(id=f"p{i}", instruction=f"item {i}", output="o", source=f"s{i % 3}")
            for i in range(n)]  # fmt: skip
    kshot = [Record(id=f"k{j}", instruction=f"item {i}", output="o")
             for j, i in enumerate(near[20:25])]  # fmt: skip
    table = {r.text: v for r, v in zip(pool, vectors)}
    one = select_data(pool, kshot, 40, mode=mode, embedder=Lookup(table), progress=False)
    assert one.summary["removed_duplicates"] > 40  # dedup refilled beyond the first block

    kshot_vectors = l2_normalize(np.stack([table[r.text] for r in kshot]))
    excluded = [int(i) for i in near[20:25]]
    shards = matrix_shards(vectors, 3)
    picked, scores, got_vectors, removed, _ = select_from_shards(
        ray_local, shards, lambda rows: [pool[int(i)] for i in rows], kshot_vectors, excluded,
        40, mode, 0.9,
    )  # fmt: skip
    assert [r.id for r in picked] == [r.id for r in one.records]
    assert np.array_equal(scores, one.scores) and np.array_equal(got_vectors, one.embeddings)
    assert removed == one.summary["removed_duplicates"]


def test_select_data_verb_with_ray_local(ray_local, tmp_path):
    pool = load_records(SAMPLE / "pool.jsonl")[:60]
    write_records(tmp_path / "pool.jsonl", pool)
    kshot = SAMPLE / "gsm8k_kshot.jsonl"
    runner = CliRunner()
    common = ["select-data", "--pool", tmp_path / "pool.jsonl", "--kshot", kshot, "--budget", 8,
              "--cache", tmp_path / "cache", "--device", "cpu", "--quiet"]  # fmt: skip
    ids = {}
    for name, extra in (("one", ["--no-cache"]), ("ray", ["--ray", "local"])):
        out = tmp_path / f"{name}.jsonl"
        result = runner.invoke(app, [str(a) for a in [*common, "--out", out, *extra]])
        assert result.exit_code == 0, result.output
        ids[name] = [r.id for r in load_records(out)]
    assert ids["ray"] == ids["one"]
    summary = json.loads((tmp_path / "ray.summary.json").read_text())
    assert summary["cache"]["misses"] == 1 and "ray-shards" in summary["cache"]["dir"]


def test_diverseevol_verb_with_ray_local(ray_local, tmp_path):
    """K-center rounds on Ray pick the rows one process picks (the tiny base, 60 records)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "recipes"))
    from test_diverseevol import make_records, write_jsonl
    from tiny_models import save_tiny_base

    save_tiny_base(tmp_path / "base")
    pool = write_jsonl(tmp_path / "pool.jsonl", make_records(60, 0, "p"))
    common = ["diverseevol", "--base", tmp_path / "base", "--pool", pool, "--init", 10,
              "--per-round", 10, "--rounds", 1, "--epochs", 1, "--batch-size", 8,
              "--max-length", 64, "--device", "cpu", "--quiet"]  # fmt: skip
    rows = {}
    for name, extra in (("one", []), ("ray", ["--ray", "local"])):
        out = tmp_path / name
        result = CliRunner().invoke(app, [str(a) for a in [*common, "--out", out, *extra]])
        assert result.exit_code == 0, result.output
        rows[name] = json.loads((out / "rounds" / "01" / "selection.json").read_text())["rows"]
    assert rows["ray"] == rows["one"] and len(rows["one"]) == 20
