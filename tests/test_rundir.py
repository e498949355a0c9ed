"""The run directory: lock (live holder refuses or waits, dead holder never blocks), identity
mismatch messages, step markers that catch a changed file, leftovers of a killed run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from taskexpert import rundir
from taskexpert.errors import InputError
from taskexpert.rundir import RunDir

HOLD = """
import sys, time
from pathlib import Path
from taskexpert.rundir import lock
with lock(Path(sys.argv[1])):
    Path(sys.argv[2]).write_text("held")
    time.sleep(float(sys.argv[3]))
"""


def _holder(directory: Path, flag: Path, seconds: float) -> subprocess.Popen:
    """Another process holding the run's lock; returns once it holds it."""
    env = {**os.environ, "PYTHONPATH": str(Path(rundir.__file__).parents[1])}
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory), str(flag), str(seconds)], env=env
    )
    deadline = time.time() + 60
    while not flag.exists():
        assert process.poll() is None and time.time() < deadline, "the holder never started"
        time.sleep(0.02)
    return process


def test_a_live_holder_refuses_a_second_run(tmp_path):
    holder = _holder(tmp_path / "run", tmp_path / "flag", 60)
    try:
        with pytest.raises(InputError, match="another diverseevol run is using this directory"):
            with rundir.lock(tmp_path / "run", what="diverseevol run"):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_live_holder_is_waited_for_when_asked(tmp_path):
    holder = _holder(tmp_path / "run", tmp_path / "flag", 1.0)
    began = time.perf_counter()
    with rundir.lock(tmp_path / "run", wait=True):
        waited = time.perf_counter() - began
    assert waited > 0.9  # the holder keeps the lock for 1 s after it says it holds it
    holder.wait()


def test_a_killed_holder_never_blocks_its_rerun(tmp_path):
    holder = _holder(tmp_path / "run", tmp_path / "flag", 60)
    holder.kill()  # SIGKILL: no cleanup runs; the lock file stays
    holder.wait()
    assert (tmp_path / "run" / rundir.LOCK_FILE).is_file()
    with rundir.lock(tmp_path / "run"):
        pass


def test_the_lock_excludes_within_one_process_too(tmp_path):
    """Two opens of the lock file are two flock holders, so threads cannot share a run."""
    inside, results = threading.Event(), []
    release = threading.Event()

    def hold():
        with rundir.lock(tmp_path):
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    inside.wait(10)
    try:
        with pytest.raises(InputError, match="another run"):
            with rundir.lock(tmp_path):
                results.append("entered")
    finally:
        release.set()
        thread.join()
    assert results == []


def test_identity_mismatch_names_the_setting_and_both_values(tmp_path):
    run = RunDir(tmp_path, kind="demo", noun="round")
    with run.open():
        run.check_identity({"train": {"lr": 5e-05}, "pool_sha256": "aa"})
        run.record_identity({"train": {"lr": 5e-05}, "pool_sha256": "aa"}, config={"x": 1})
    stored = json.loads(run.identity_path.read_text())
    assert stored["version"] == 1 and stored["config"] == {"x": 1} and "taskexpert" in stored
    run.check_identity({"train": {"lr": 5e-05}, "pool_sha256": "aa"})  # the same: resumes
    with pytest.raises(InputError, match=r"different train.lr \(value 5e-05, now 0.001\)"):
        run.check_identity({"train": {"lr": 0.001}, "pool_sha256": "aa"})
    with pytest.raises(InputError, match=r"different --pool \(content 'aa', now 'bb'\)") as info:
        run.check_identity(
            {"train": {"lr": 5e-05}, "pool_sha256": "bb"},
            option_name=lambda key: "--pool" if key == "pool_sha256" else key,
        )
    assert info.value.field == "--pool" and "run.json" in str(info.value)
    changes = rundir.identity_changes({"train": {"lr": 5e-05}}, {"train": {"lr": 0.001}})
    assert [c.describe(lambda k: "--lr") for c in changes] == ["--lr 5e-05, now 0.001"]
    # a setting added since the run started resumes while it keeps its default
    assert not rundir.identity_changes({}, {"new": 0}, default_of=lambda key: 0)
    assert rundir.identity_changes({}, {"new": 1}, default_of=lambda key: 0)


def test_a_run_file_of_another_format_version_is_refused_by_version(tmp_path):
    RunDir(tmp_path, kind="demo", version=1).record_identity({"a": 1})
    with pytest.raises(
        InputError,
        match=r"format version 2 \(it has 1, written by another taskexpert version\); rerun",
    ):
        RunDir(tmp_path, kind="demo", version=2).check_identity({"a": 1})


def test_a_marker_catches_a_changed_or_missing_file(tmp_path):
    run = RunDir(tmp_path / "run", kind="demo", noun="round")
    with run.open(), run.step("rounds/00", {"round": 0}) as tmp:
        (tmp / "model").mkdir()
        (tmp / "model" / "weights.bin").write_bytes(b"\x00" * 100)
        (tmp / "summary.json").write_text("{}")
    step = tmp_path / "run" / "rounds" / "00"
    marker = rundir.check_marker(step, {"round": 0})
    assert set(marker["files"]) == {"model/weights.bin", "summary.json"}
    with pytest.raises(rundir.CorruptStep, match="unreadable"):
        rundir.check_marker(step, {"round": 1})  # the marker of another step
    (step / "model" / "weights.bin").write_bytes(b"\x01" + b"\x00" * 99)  # same size
    with pytest.raises(rundir.CorruptStep, match="corrupted round: the file changed") as info:
        rundir.check_marker(step, {"round": 0}, noun="round")
    assert "weights.bin" in str(info.value)
    (step / "model" / "weights.bin").write_bytes(b"\x00" * 100)
    rundir.check_marker(step, {"round": 0})
    (step / "summary.json").unlink()
    with pytest.raises(rundir.CorruptStep, match="missing"):
        rundir.check_marker(step, {"round": 0})


def test_a_failed_step_leaves_nothing_under_its_name(tmp_path):
    run = RunDir(tmp_path, kind="demo")
    with pytest.raises(RuntimeError), run.step("rounds/00", {"round": 0}) as tmp:
        (tmp / "half.json").write_text("{")
        raise RuntimeError("killed")
    assert not (tmp_path / "rounds" / "00").exists()
    assert not list((tmp_path / "rounds").iterdir())


def _finish(run: RunDir, index: int) -> None:
    with run.step(f"rounds/{index:02d}", {"round": index}) as tmp:
        (tmp / "rows.json").write_text(json.dumps([index]))


def test_finished_steps_resume_after_the_last_marked_one(tmp_path):
    run = RunDir(tmp_path, kind="demo", noun="round")
    for index in range(3):
        _finish(run, index)
    assert [p.name for p in run.finished_steps("rounds", "round")] == ["00", "01", "02"]
    # round 1 lost its marker (killed between steps, or by hand): it and round 2 are rerun
    (tmp_path / "rounds" / "01" / rundir.MARKER).unlink()
    (tmp_path / "rounds" / ".02.ab12cd.tmp").mkdir()  # a killed round's temp directory
    assert [p.name for p in run.finished_steps("rounds", "round")] == ["00"]
    assert sorted(p.name for p in (tmp_path / "rounds").iterdir()) == ["00"]
    _finish(run, 1)
    _finish(run, 2)
    import shutil

    shutil.rmtree(tmp_path / "rounds" / "01")
    with pytest.raises(InputError, match="round 2 exists but round 1 does not"):
        run.finished_steps("rounds", "round")


def test_opening_clears_a_killed_runs_leftovers_and_a_failed_fresh_dir_goes(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    (root / ".run.json.x1y2.tmp").write_text("{")
    (root / ".scratch.ab12.old.tmp").mkdir()
    (root / "keep.txt").write_text("kept")
    with RunDir(root, kind="demo").open():
        pass
    assert sorted(p.name for p in root.iterdir()) == [".lock", "keep.txt"]
    nested = tmp_path / "nested"
    (nested / "a" / "b").mkdir(parents=True)
    (nested / "a" / "b" / ".f.zz.tmp").write_text("")
    assert rundir.clear_leftovers(nested, recursive=True) == 1
    # a run directory this call created goes again when the run fails before its identity
    fresh = tmp_path / "fresh"
    with pytest.raises(InputError), RunDir(fresh, kind="demo").open():
        raise InputError("bad --base")
    assert not fresh.exists()


def test_in_place_steps_mark_fixed_paths_and_catch_changes(tmp_path):
    """Steps whose outputs stay where other code reads them (the testbed's `base/`,
    `bank/<adapter>/`): the marker goes under `.steps/`, with checksums of the outputs."""
    run = RunDir(tmp_path, kind="demo", noun="phase")
    assert run.finished_in_place("base", {"phase": "base"}) is None
    meta = {"phase": "base"}
    with run.step_in_place("base", meta) as root:
        (root / "base").mkdir()
        (root / "base" / "w.bin").write_bytes(b"weights")
        meta["info"] = {"seconds": 1.5}  # read as the block ends
    marker = run.finished_in_place("base", {"phase": "base"})
    assert marker["info"] == {"seconds": 1.5} and set(marker["files"]) == {"base/w.bin"}
    assert (tmp_path / ".steps" / "base" / rundir.MARKER).is_file()
    with run.step_in_place("data", {"phase": "data"}, ["pool.jsonl", "tasks"]) as root:
        (root / "pool.jsonl").write_text("{}\n")
        (root / "tasks" / "t").mkdir(parents=True)
        (root / "tasks" / "t" / "kshot.jsonl").write_text("{}\n")
    files = run.finished_in_place("data", {"phase": "data"})["files"]
    assert set(files) == {"pool.jsonl", "tasks/t/kshot.jsonl"}
    assert run.finished_in_place("data", {"phase": "other"}, strict=False) is None
    # a changed output: an error, or (not strict) the step is forgotten and reruns
    (tmp_path / "base" / "w.bin").write_bytes(b"weightz")
    with pytest.raises(rundir.CorruptStep, match="changed after the phase finished"):
        run.finished_in_place("base", {"phase": "base"})
    assert run.finished_in_place("base", {"phase": "base"}, strict=False) is None
    assert not (tmp_path / ".steps" / "base" / rundir.MARKER).exists()
    # a failed block leaves no marker (and drops the one it replaces)
    with pytest.raises(RuntimeError), run.step_in_place("data", {"phase": "data"}, ["tasks"]):
        raise RuntimeError("killed")
    assert run.finished_in_place("data", {"phase": "data"}) is None


def test_forget_takes_nested_in_place_steps_along(tmp_path):
    run = RunDir(tmp_path, kind="demo")
    for name in ("bank/a", "bank/b", "bank"):
        with run.step_in_place(name, {"step": name}) as root:
            (root / name).mkdir(parents=True, exist_ok=True)
            (root / name / "f").write_text(name)
    run.forget("bank", nested=False)  # the bank is no longer finished, its adapters are
    assert run.finished_in_place("bank", {}) is None
    assert run.finished_in_place("bank/a", {"step": "bank/a"}) is not None
    run.forget("bank")
    assert (
        run.finished_in_place("bank/a", {}) is None
        and not (tmp_path / ".steps").joinpath("bank").exists()
    )
    assert (tmp_path / "bank" / "a" / "f").is_file()  # outputs are the caller's business
