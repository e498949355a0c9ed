"""Kill -9 and resume, select-data: a run SIGKILLed while it embeds the pool keeps every
finished cache shard; the rerun embeds only the rest and selects what an uninterrupted run
selects."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from kill_resume import assert_no_partial_files, cli_env, kill_midway, rerun, without

SHARD_ROWS = 16  # small shards, so the pool pass writes many and a kill lands between them
POOL_SIZE = 240
KSHOT_SIZE = 6
SCORE_ATOL = 1e-5  # cosine scores (rounded to 1e-6) from vectors embedded in other batches


def make_pool(n: int) -> list[dict]:
    """Math word problems, code tasks and chat prompts, distinct texts, fixed by the seed."""
    rng = random.Random(0)
    names = ["Tom", "Sara", "Ben", "Mia", "Ali", "Zoe", "Raj", "Eva"]
    things = ["apples", "pencils", "marbles", "books", "coins", "cards", "shells", "stamps"]
    langs = ["Python", "SQL", "JavaScript", "Rust", "Go"]
    tasks = ["reverses a string", "counts vowels", "sorts a list", "sums a column", "parses a date"]
    topics = ["autumn leaves", "the sea", "a city at night", "old friends", "mountain rain"]
    rows = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            a, b = rng.randint(2, 90), rng.randint(2, 90)
            who, what = rng.choice(names), rng.choice(things)
            instruction = f"{who} has {a} {what} and gets {b} more. How many {what} now? (#{i})"
            output, source = f"{a} + {b} = {a + b}. The answer is {a + b}.", "math"
        elif kind == 1:
            lang, task = rng.choice(langs), rng.choice(tasks)
            instruction = f"Write a {lang} function that {task} (variant {i})."
            output, source = f"Here is a {lang} function that {task}.", "code"
        else:
            topic = rng.choice(topics)
            instruction = f"Write a short poem about {topic}, number {i}."
            output, source = f"A poem about {topic}: words drift like light.", "chat"
        rows.append({"id": f"p{i}", "instruction": instruction, "output": output, "source": source})
    return rows


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def small_shards(monkeypatch):
    monkeypatch.setenv("TASKEXPERT_CACHE_SHARD_ROWS", str(SHARD_ROWS))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("select_data")
    pool, kshot = root / "pool.jsonl", root / "kshot.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in make_pool(POOL_SIZE)))
    kshot_rows = [
        {"id": f"k{i}", "instruction": f"Mary has {i + 3} pears and eats {i}. How many are left?",
         "output": f"{i + 3} - {i} = 3. The answer is 3."}
        for i in range(KSHOT_SIZE)
    ]  # fmt: skip
    kshot.write_text("".join(json.dumps(r) + "\n" for r in kshot_rows))
    return pool, kshot


def command(files, out, cache) -> list:
    pool, kshot = files
    return [
        "select-data", "--pool", pool, "--kshot", kshot, "--budget", "20", "--out", out,
        "--cache", cache, "--device", "cpu",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(files, tmp_path_factory):
    """The uninterrupted run (its own cache)."""
    root = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TASKEXPERT_CACHE_SHARD_ROWS", str(SHARD_ROWS))
        rerun(command(files, root / "selected.jsonl", root / "cache"))
    return root / "selected.jsonl"


def cached_rows(cache) -> int:
    """Texts in the finished shards (a shard counts once its keys file exists)."""
    return sum(len(np.load(path)) for path in cache.rglob("*.keys.npy"))


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    "seed, fresh_interpreter", [(0, False), pytest.param(1, True, marks=pytest.mark.slow)]
)
def test_a_killed_run_resumes_from_its_cache_shards(
    files, reference, tmp_path, seed, fresh_interpreter
):
    ref_out = reference
    out, cache = tmp_path / "selected.jsonl", tmp_path / "cache"
    rng = random.Random(seed)
    # shards written before the kill: the K-shot's, then 1 to 9 of the pool's 15
    target = rng.randint(2, 10)
    kill = kill_midway(
        command(files, out, cache),
        lambda: len(list(cache.rglob("*.keys.npy"))) >= target,
        rng=rng,
        window=0.2,  # about one shard's embedding
        log=tmp_path / "killed.log",
        env=cli_env(TASKEXPERT_CACHE_SHARD_ROWS=str(SHARD_ROWS)),
    )
    done = cached_rows(cache)
    kill.where = (
        f"seed {seed}, after shard {target}: {done} of {POOL_SIZE + KSHOT_SIZE} texts in "
        "finished cache shards"
    )
    print(kill)

    # (b) no selection yet; every shard under its final name loads whole and pairs up
    assert not out.exists() and not out.with_name("selected.summary.json").exists()
    assert assert_no_partial_files(tmp_path) > 0
    for keys in cache.rglob("*.keys.npy"):
        vectors = np.load(keys.with_name(keys.name.replace(".keys.npy", ".vec.npy")))
        assert vectors.shape == (len(np.load(keys)), 384)
    assert KSHOT_SIZE < done < POOL_SIZE + KSHOT_SIZE

    rerun(
        command(files, out, cache),
        subprocess_log=(tmp_path / "rerun.log") if fresh_interpreter else None,
    )

    # (a) only the texts the killed run had not cached were embedded; the same selection
    summary = json.loads(out.with_name("selected.summary.json").read_text())
    assert summary["cache"]["misses"] == POOL_SIZE + KSHOT_SIZE - done
    selected, expected = read_jsonl(out), read_jsonl(ref_out)
    assert [r["id"] for r in selected] == [r["id"] for r in expected]
    for row, ref_row in zip(selected, expected):
        assert row["score"] == pytest.approx(ref_row["score"], abs=SCORE_ATOL)
        assert without(row, {"score"}) == without(ref_row, {"score"})
    ref_summary = json.loads(ref_out.with_name("selected.summary.json").read_text())
    drop = {"timings_s", "cache", "out", "score", "vendi_score"}
    assert without(summary, drop) == without(ref_summary, drop)
    assert summary["vendi_score"] == pytest.approx(ref_summary["vendi_score"], abs=1e-3)
    for stat, value in ref_summary["score"].items():  # rounded to 1e-4
        assert summary["score"][stat] == pytest.approx(value, abs=2e-4)
