"""DiverseEvol on a tiny Llama and a 60-record pool: the rounds, every strategy against its
definition, resume after a crash or a kill, and every kind of bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from taskexpert.errors import InputError
from taskexpert.lm_embed import train_format_ids
from taskexpert.recipes import diverseevol as de
from taskexpert.recipes.diverseevol_rounds import load_round_model
from taskexpert.selection.kcenter import kcenter_greedy
from taskexpert.train import TrainConfig

FAMILIES = ("add", "reverse", "upper")


def make_records(n: int, seed: int, prefix: str) -> list[dict]:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        family = FAMILIES[i % 3]
        a, b = (int(x) for x in rng.integers(0, 10, 2))
        word = "".join(rng.choice(list("abcdef"), int(rng.integers(2, 7))))
        instruction, answer = {
            "add": (f"Add {a} and {b}.", str(a + b)),
            "reverse": (f"Reverse {word}.", word[::-1]),
            "upper": (f"Upper-case {word}.", word.upper()),
        }[family]
        records.append(
            {
                "id": f"{prefix}{i}",
                "instruction": instruction,
                "output": f"The answer is {answer}.",
                "answer": answer,
                "source": family,
            }
        )
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A saved tiny base model, a 60-record pool and a 6-record evaluation set."""
    from tiny_models import save_tiny_base

    root = tmp_path_factory.mktemp("diverseevol")
    save_tiny_base(root / "base")
    pool = write_jsonl(root / "pool.jsonl", make_records(60, 0, "p"))
    evaluation = write_jsonl(root / "eval.jsonl", make_records(6, 1, "e"))
    return {"base": root / "base", "pool": pool, "eval": evaluation}


def config(world, **overrides) -> de.DiverseEvolConfig:
    values = dict(
        base=str(world["base"]),
        pool=world["pool"],
        init=10,
        per_round=10,
        rounds=2,
        train=TrainConfig(epochs=1, lr=1e-2, batch_size=8, max_length=64),
        embed_batch_size=16,
        eval_max_new_tokens=6,
        progress=False,
        # the paper's K-center, which the schedule tests below check pick by pick (the
        # default, k-means without the far 5%, is checked in test_baselines_pick_...)
        strategy="kcenter",
        outlier_share=0.0,
        loss_outlier_z=0.0,
    )
    values.update(overrides)
    return de.DiverseEvolConfig(**values)


def rows_of(run_dir: Path, index: int) -> list[int]:
    return json.loads((run_dir / "rounds" / f"{index:02d}" / "selection.json").read_text())["rows"]


def adapter(run_dir: Path, index: int) -> dict:
    return load_file(
        str(run_dir / "rounds" / f"{index:02d}" / "model" / "adapter_model.safetensors")
    )


def round_model_embeddings(world, run_dir: Path, index: int, cfg) -> np.ndarray:
    """The pool embedded by a finished round's saved model, computed independently."""
    from taskexpert.lm_embed import pooled_hidden_states
    from taskexpert.models import load_base
    from taskexpert.records import load_records

    base, tokenizer = load_base(str(world["base"]), device="cpu")
    model = load_round_model(base, run_dir / "rounds" / f"{index:02d}", cfg, trainable=False)
    pool = load_records(world["pool"])
    ids = list(train_format_ids(tokenizer, pool, cfg.train.max_length))
    return pooled_hidden_states(model, ids, len(ids), pad_id=0, progress=False)


def test_kcenter_rounds_grow_the_subset_with_the_previous_models_farthest_points(world, tmp_path):
    cfg = config(world, eval=world["eval"])
    result = de.run_diverseevol(cfg, tmp_path / "run")
    run = tmp_path / "run"
    assert [s["size"] for s in result.rounds] == [10, 20, 30]
    for index, summary in enumerate(result.rounds):
        directory = run / "rounds" / f"{index:02d}"
        assert {"subset.jsonl", "selection.json", "summary.json", "eval.json", "COMPLETE.json"} <= {
            p.name for p in directory.iterdir()
        }
        assert (directory / "model" / "adapter_model.safetensors").is_file()
        assert summary["seconds"] > 0 and 1.0 <= summary["vendi"] <= summary["size"]
        assert 0.0 <= summary["exact_match"] <= 1.0
        assert set(summary["exact_match_by_source"]) == set(FAMILIES)
    rows = [rows_of(run, i) for i in range(3)]
    assert rows[1][:10] == rows[0] and rows[2][:20] == rows[1] and len(set(rows[2])) == 30
    # round r's additions are K-center picks in round r-1's model's embedding space
    embeddings = round_model_embeddings(world, run, 0, cfg)
    assert rows[1][10:] == kcenter_greedy(embeddings, 10, initial=rows[0], progress=False)
    # Vendi is measured under the base model's embeddings, cached once in the run directory
    from taskexpert.selection.vendi import vendi_score

    base_embeddings = np.load(run / "base_embeddings.npy")
    assert result.rounds[2]["vendi"] == pytest.approx(
        vendi_score(base_embeddings[sorted(rows[2])]), abs=1e-3
    )
    curve = json.loads((run / "curve.json").read_text())
    assert [c["size"] for c in curve] == [10, 20, 30]
    assert not (run / "scratch").exists()


@pytest.mark.parametrize(
    "strategy", ["random", "least-confidence", "entropy", "kcenter-oneshot", "kmeans"]
)
def test_baselines_pick_by_their_definition(world, tmp_path, strategy):
    from taskexpert.models import load_base
    from taskexpert.records import load_records
    from taskexpert.selection.uncertainty import most_uncertain, uncertainty_scores

    defaults = de.DiverseEvolConfig.model_fields
    share = defaults["outlier_share"].default if strategy == "kmeans" else 0.0
    z = defaults["loss_outlier_z"].default if strategy == "kmeans" else 0.0
    cfg = config(world, strategy=strategy, rounds=1, outlier_share=share, loss_outlier_z=z)
    de.run_diverseevol(cfg, tmp_path / "run")
    init, grown = rows_of(tmp_path / "run", 0), rows_of(tmp_path / "run", 1)
    # round 0 is the same seeded uniform draw whatever the strategy
    assert init == np.random.default_rng(0).permutation(60)[:10].tolist()
    assert grown[:10] == init and len(set(grown)) == 20
    added = grown[10:]
    if strategy == "kcenter-oneshot":
        base_embeddings = np.load(tmp_path / "run" / "base_embeddings.npy")
        assert added == kcenter_greedy(base_embeddings, 10, initial=init, progress=False)
    elif strategy == "kmeans":
        from taskexpert.recipes.diverseevol_rounds import round_seed
        from taskexpert.selection.kmeans import kmeans_representatives
        from taskexpert.selection.outliers import far_outliers, high_loss_rows

        assert defaults["strategy"].default == "kmeans" and share > 0 and z > 0  # the default
        embeddings = round_model_embeddings(world, tmp_path / "run", 0, cfg)
        far = far_outliers(embeddings, share, seed=cfg.seed)
        assert len(far) > 0 and not set(added) & set(far.tolist())
        tail = high_loss_rows(np.load(tmp_path / "run" / "base_losses.npy"), z)
        seed = round_seed(cfg, 1)
        exclude = np.union1d(np.union1d(init, far), tail)
        assert added == kmeans_representatives(embeddings, 10, exclude=exclude, seed=seed)
    elif strategy != "random":
        base, tokenizer = load_base(str(world["base"]), device="cpu")
        model = load_round_model(base, tmp_path / "run" / "rounds" / "00", cfg, False)
        pool = load_records(world["pool"])
        unchosen = [i for i in range(len(pool)) if i not in init]
        ids = list(train_format_ids(tokenizer, [pool[i] for i in unchosen], 64))
        scores = uncertainty_scores(model, ids, len(ids), measures=[strategy], progress=False)
        expected = np.array(unchosen)[most_uncertain(scores[strategy], strategy, 10)]
        assert added == expected.tolist()


def test_a_crash_inside_round_2_resumes_to_the_uninterrupted_result(world, tmp_path, monkeypatch):
    import taskexpert.train as train_module

    reference = tmp_path / "reference"
    de.run_diverseevol(config(world), reference)

    real_train, calls = train_module.train, []

    def crashing_train(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # round 2, after its subset was selected and written
            raise RuntimeError("simulated crash")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(train_module, "train", crashing_train)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        de.run_diverseevol(config(world), run)
    assert sorted(p.name for p in (run / "rounds").iterdir()) == ["00", "01"]
    monkeypatch.setattr(train_module, "train", real_train)
    result = de.run_diverseevol(config(world), run)
    assert result.resumed_from == 2 and len(result.rounds) == 3
    for index in range(3):
        assert rows_of(run, index) == rows_of(reference, index)
    for name, tensor in adapter(reference, 2).items():
        np.testing.assert_array_equal(adapter(run, 2)[name], tensor)


@pytest.mark.slow
def test_a_killed_process_resumes_to_the_uninterrupted_result(world, tmp_path):
    args = [
        "diverseevol",
        "--base", str(world["base"]), "--pool", str(world["pool"]),
        "--init", "10", "--per-round", "10", "--rounds", "3",
        "--epochs", "3", "--batch-size", "4", "--max-length", "64", "--lr", "0.01",
    ]  # fmt: skip
    code = "import sys; from taskexpert.cli import main; sys.argv[0] = 'taskexpert'; main()"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def launch(out: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", code, *args, "--out", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )

    run = tmp_path / "run"
    process = launch(run)
    deadline = time.time() + 240
    while not (run / "rounds" / "01" / "COMPLETE.json").exists():
        assert process.poll() is None and time.time() < deadline, "round 1 never finished"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "rounds" / "03").exists(), "the run finished before it could be killed"
    assert (run / "run.json").is_file()

    assert launch(run).wait(timeout=300) == 0
    reference = tmp_path / "reference"
    train = de.default_train_config().model_copy(
        update={"epochs": 3.0, "batch_size": 4, "max_length": 64, "lr": 0.01}
    )
    de.run_diverseevol(config(world, rounds=3, train=train, embed_batch_size=32), reference)
    for index in range(4):
        assert rows_of(run, index) == rows_of(reference, index)
    assert not list((run / "rounds").glob(".*"))  # the killed round's temp directory is gone
    for name, tensor in adapter(reference, 3).items():
        np.testing.assert_array_equal(adapter(run, 3)[name], tensor)


def test_finished_run_is_not_recomputed_and_rounds_may_grow(world, tmp_path):
    run = tmp_path / "run"
    de.run_diverseevol(config(world, rounds=1), run)
    stamp = (run / "rounds" / "01" / "COMPLETE.json").stat().st_mtime_ns
    again = de.run_diverseevol(config(world, rounds=1), run)
    assert again.resumed_from == 2 and [s["size"] for s in again.rounds] == [10, 20]
    grown = de.run_diverseevol(config(world, rounds=2), run)
    assert grown.resumed_from == 2 and [s["size"] for s in grown.rounds] == [10, 20, 30]
    assert (run / "rounds" / "01" / "COMPLETE.json").stat().st_mtime_ns == stamp
    with pytest.raises(InputError, match="more than --rounds 1"):
        de.run_diverseevol(config(world, rounds=1), run)


def test_half_written_rounds_are_rerun_and_corrupted_ones_refused(world, tmp_path):
    run = tmp_path / "run"
    de.run_diverseevol(config(world), run)
    expected = rows_of(run, 2)
    # a temp directory of a killed round and a round directory without its marker: rerun
    (run / "rounds" / ".02.abc.tmp").mkdir()
    (run / "rounds" / "02" / "COMPLETE.json").unlink()
    result = de.run_diverseevol(config(world), run)
    assert result.resumed_from == 2 and rows_of(run, 2) == expected
    assert sorted(p.name for p in (run / "rounds").iterdir()) == ["00", "01", "02"]
    # a finished round whose files changed: never trusted, and the error says what to do
    subset = run / "rounds" / "01" / "subset.jsonl"
    subset.write_text(subset.read_text().replace('"p', '"q', 1))
    with pytest.raises(InputError, match="corrupted round.*delete") as info:
        de.run_diverseevol(config(world), run)
    assert str(subset) in str(info.value)
    shutil.rmtree(run / "rounds" / "01")
    with pytest.raises(InputError, match="round 2 exists but round 1 does not"):
        de.run_diverseevol(config(world), run)


def test_full_fine_tune_and_continue(world, tmp_path):
    cfg = config(world, lora=False, restart_from_base=False, rounds=1)
    result = de.run_diverseevol(cfg, tmp_path / "run")
    assert [s["size"] for s in result.rounds] == [10, 20]
    model_dir = tmp_path / "run" / "rounds" / "01" / "model"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "config.json").is_file()
    from taskexpert.models import load_base

    model, _ = load_base(str(model_dir), device="cpu")  # a full round model loads on its own
    assert sum(p.numel() for p in model.parameters()) > 0


def test_other_arguments_into_the_same_directory_name_the_option(world, tmp_path):
    run = tmp_path / "run"
    de.run_diverseevol(config(world, rounds=1), run)
    with pytest.raises(InputError, match="different --per-round") as info:
        de.run_diverseevol(config(world, rounds=1, per_round=5), run)
    assert info.value.field == "--per-round"
    with pytest.raises(InputError, match="--restart-from-base/--continue"):
        de.run_diverseevol(config(world, rounds=1, restart_from_base=False), run)
    with pytest.raises(InputError, match="different --lr"):
        train = TrainConfig(epochs=1, lr=5e-3, batch_size=8, max_length=64)
        de.run_diverseevol(config(world, rounds=1, train=train), run)
    changed = tmp_path / "pool.jsonl"
    write_jsonl(changed, make_records(60, 5, "p"))
    with pytest.raises(InputError, match="different --pool"):
        de.run_diverseevol(config(world, rounds=1, pool=changed), run)
    # runtime knobs may change between reruns
    de.run_diverseevol(config(world, rounds=1, embed_batch_size=4, checkpoint_every=2), run)


def test_bad_sizes_and_strategy_fail_before_any_work(world, tmp_path):
    with pytest.raises(InputError, match="fewer than --init 55 plus one round"):
        de.run_diverseevol(config(world, init=55), tmp_path / "a")
    with pytest.raises(InputError, match=r"10 \+ --rounds 6 x --per-round 10 = 70 records"):
        de.run_diverseevol(config(world, rounds=6), tmp_path / "b")
    with pytest.raises(InputError, match="unknown strategy 'coreset'"):
        de.run_diverseevol(config(world, strategy="coreset"), tmp_path / "c")
    bad_pool = write_jsonl(tmp_path / "bad.jsonl", make_records(59, 0, "p") + [
        {"id": "x", "instruction": "say nothing", "output": " "}
    ])  # fmt: skip
    with pytest.raises(InputError, match="empty output") as info:
        de.run_diverseevol(config(world, pool=bad_pool), tmp_path / "d")
    assert info.value.field == "output"
    bad_eval = write_jsonl(tmp_path / "e.jsonl", [{"id": "1", "instruction": "hi", "output": ""}])
    with pytest.raises(InputError, match="gold answer"):
        de.run_diverseevol(config(world, eval=bad_eval), tmp_path / "e")
    with pytest.raises(InputError, match="embed layer 9"):
        de.run_diverseevol(config(world, embed_layer=9), tmp_path / "f")
    assert not any((tmp_path / name / "rounds").exists() for name in "abcdef")


def test_cli_runs_and_reports_bad_input(world, tmp_path):
    from typer.testing import CliRunner

    from taskexpert.cli import app

    out = tmp_path / "run"
    common = ["diverseevol", "--base", str(world["base"]), "--pool", str(world["pool"])]
    small = ["--init", "10", "--per-round", "10", "--rounds", "1", "--epochs", "1"]
    result = CliRunner().invoke(app, [*common, *small, "--strategy", "random", "--out", str(out)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout[result.stdout.index("{") :])
    assert [r["size"] for r in printed["rounds"]] == [10, 20]
    result = CliRunner().invoke(app, [*common, *small, "--strategy", "nope", "--out", str(out)])
    assert isinstance(result.exception, InputError) and "unknown strategy" in str(result.exception)
    result = CliRunner().invoke(app, [*common, "--init", "0", "--out", str(out)])
    assert isinstance(result.exception, InputError) and result.exception.field == "init"


def test_on_the_micro_testbed(micro_testbed, tmp_path):
    """The testbed's own tokenizer and model, its pool and a calibration set as --eval."""
    cfg = de.DiverseEvolConfig(
        base=str(micro_testbed.base_dir),
        pool=micro_testbed.pool_path,
        init=20,
        per_round=20,
        rounds=1,
        embed_layer=1,
        train=TrainConfig(epochs=1, lr=3e-3, batch_size=16, max_length=128),
        eval=micro_testbed.calibration_path("add"),
        eval_max_new_tokens=8,
        progress=False,
    )
    result = de.run_diverseevol(cfg, tmp_path / "run")
    assert [s["size"] for s in result.rounds] == [20, 40]
    assert set(result.rounds[1]["exact_match_by_source"]) == {"add"}
    rows = rows_of(tmp_path / "run", 1)
    assert len(set(rows)) == 40 and max(rows) < micro_testbed.truth["pool"]["size"]


def test_the_loss_filter_keeps_the_base_models_high_loss_tail_out_and_resumes(world, tmp_path):
    from taskexpert.lm import mean_nll
    from taskexpert.models import load_base
    from taskexpert.prompts import format_prompt
    from taskexpert.records import load_records
    from taskexpert.selection.outliers import high_loss_rows

    # a low cut, so the 60-record pool has a tail to leave out
    cfg = config(world, strategy="kmeans", rounds=1, outlier_share=0.0, loss_outlier_z=0.5)
    de.run_diverseevol(cfg, tmp_path / "run")
    stored = np.load(tmp_path / "run" / "base_losses.npy")
    base, tokenizer = load_base(str(world["base"]), device="cpu")
    pool = load_records(world["pool"])
    expected = mean_nll(base, tokenizer, [format_prompt(r, tokenizer) for r in pool],
                        [r.output for r in pool], max_length=64)  # fmt: skip
    np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-5)  # float32 storage
    tail = set(high_loss_rows(stored, 0.5).tolist())
    added = rows_of(tmp_path / "run", 1)[10:]
    assert tail and len(added) == 10 and not tail & set(added)
    # a rerun resumes: the stored losses are reused, not recomputed, and the rows stay
    stamp = (tmp_path / "run" / "base_losses.npy").stat().st_mtime_ns
    de.run_diverseevol(cfg.model_copy(update={"rounds": 2}), tmp_path / "run")
    assert (tmp_path / "run" / "base_losses.npy").stat().st_mtime_ns == stamp
    assert rows_of(tmp_path / "run", 1)[10:] == added
    assert not tail & set(rows_of(tmp_path / "run", 2)[20:])
    assert de.default_of("loss_outlier_z") == 0.0  # runs made before the setting had it off


def test_a_run_started_before_a_setting_existed_resumes_while_it_keeps_its_default(tmp_path):
    old = {"strategy": "kcenter", "train": {"lr": 0.001}}  # no outlier_share, no train.seed
    run = de.run_directory(tmp_path)
    run.identity_path.write_text(json.dumps({"version": de.FORMAT_VERSION, "identity": old}))
    de.check_identity(run, {**old, "outlier_share": 0.0, "train": {"lr": 0.001, "seed": 0}})
    with pytest.raises(InputError, match="--outlier-share"):
        de.check_identity(run, {**old, "outlier_share": 0.05})
    with pytest.raises(InputError, match="--strategy"):
        de.check_identity(run, {**old, "strategy": "random"})


def test_a_run_from_before_drop_leaked_resumes_without_eval_and_is_asked_with_it(world, tmp_path):
    cfg = config(world, rounds=1)
    run = de.run_directory(tmp_path)
    old = de.identity(cfg, "pool-sha", None)
    del old["drop_leaked"]  # recorded before the setting existed
    run.identity_path.write_text(json.dumps({"version": de.FORMAT_VERSION, "identity": old}))
    de.check_identity(run, de.identity(cfg, "pool-sha", None))  # today's default, no --eval
    old_with_eval = {**old, "eval_sha256": "eval-sha"}
    run.identity_path.write_text(
        json.dumps({"version": de.FORMAT_VERSION, "identity": old_with_eval})
    )
    with pytest.raises(InputError, match="--drop-leaked"):  # its subsets may hold test items
        de.check_identity(run, de.identity(cfg, "pool-sha", "eval-sha"))
    de.check_identity(run, de.identity(cfg.model_copy(update={"drop_leaked": False}),
                                       "pool-sha", "eval-sha"))  # fmt: skip


def test_pool_records_that_are_eval_items_are_never_picked(world, tmp_path):
    pool = make_records(60, 0, "p")
    evaluation = make_records(6, 1, "e")
    pool[5], pool[17] = {**evaluation[0], "id": "copy0"}, {**evaluation[3], "id": "copy3"}
    questions = {e["instruction"] for e in evaluation}
    leaked = {k for k, r in enumerate(pool) if r["instruction"] in questions}
    assert {5, 17} <= leaked
    world = {**world, "pool": write_jsonl(tmp_path / "pool.jsonl", pool)}
    evaluation = write_jsonl(tmp_path / "eval.jsonl", evaluation)
    usable = len(pool) - len(leaked)
    for strategy in ("random", "kcenter"):  # round 1 must take every row that is not a leak
        cfg = config(world, eval=evaluation, strategy=strategy, rounds=1, per_round=usable - 10)
        de.run_diverseevol(cfg, tmp_path / strategy)
        assert sorted(rows_of(tmp_path / strategy, 1)) == sorted(set(range(60)) - leaked)
        written = json.loads((tmp_path / strategy / de.LEAKAGE_FILE).read_text())
        assert written["rows"] == sorted(leaked) and written["checked"] == 60
    with pytest.raises(InputError, match=f"once the {len(leaked)} that are evaluation items"):
        de.run_diverseevol(config(world, eval=evaluation, rounds=1, per_round=usable - 9),
                           tmp_path / "too-many")  # fmt: skip
    kept = config(world, eval=evaluation, strategy="random", rounds=1, per_round=50,
                  drop_leaked=False)  # fmt: skip
    de.run_diverseevol(kept, tmp_path / "kept")  # the whole pool: the copies are trained on
    assert sorted(rows_of(tmp_path / "kept", 1)) == list(range(60))
    assert not (tmp_path / "kept" / de.LEAKAGE_FILE).exists()
    assert de.default_of("drop_leaked") is False  # runs made before the setting kept them
