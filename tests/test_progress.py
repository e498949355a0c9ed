"""Progress: bars on a terminal only, a few log lines elsewhere, nothing when quiet."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from taskexpert import progress as progress_module
from taskexpert.cli import VERBS, app
from taskexpert.progress import LogProgress, NullProgress, progress


@pytest.fixture
def logs(caplog, monkeypatch):
    monkeypatch.delenv(progress_module.QUIET_ENV, raising=False)
    monkeypatch.setattr(progress_module, "on_terminal", lambda: False)
    monkeypatch.setattr(progress_module, "QUICK_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger="taskexpert")
    return caplog


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "taskexpert"]


def test_off_a_terminal_a_step_logs_start_each_tenth_and_end(logs):
    bar = progress(total=300, desc="k-center", unit="pick")
    assert isinstance(bar, LogProgress)
    with bar:
        for _ in range(300):
            bar.update()
    got = lines(logs)
    assert len(got) == 11, got  # start, 10% ... 90%, done
    assert got[0] == "k-center: started 300 pick"
    assert got[1].startswith("k-center: 10% (30/300 pick,")
    assert got[-1].startswith("k-center: done 300 pick (") and "pick/s" in got[-1]


def test_iterating_counts_and_closes_once(logs):
    assert list(progress(range(5), desc="walk")) == list(range(5))
    got = lines(logs)
    assert got[0] == "walk: started 5 it" and got[-1].startswith("walk: done 5 it")
    assert sum("done" in line for line in got) == 1


def test_resumed_steps_count_from_where_they_were(logs):
    with progress(total=10, initial=6, desc="train", unit="step") as bar:
        bar.set_postfix(loss="0.500")
        for _ in range(4):
            bar.update()
    got = lines(logs)
    assert got[0] == "train: started 10 step, resumed at 6"
    assert [line.split(" (")[0] for line in got[1:]] == [
        "train: 70%",
        "train: 80%",
        "train: 90%",
        "train: done 10 step",
    ]
    assert got[-1].endswith("; loss 0.500")


def test_a_quick_step_logs_nothing_and_a_failed_one_says_where_it_stopped(logs, monkeypatch):
    monkeypatch.setattr(progress_module, "QUICK_SECONDS", 60.0)
    for _ in progress(range(50), desc="quick"):
        pass
    assert lines(logs) == []
    monkeypatch.setattr(progress_module, "QUICK_SECONDS", 0.0)
    with pytest.raises(ValueError), progress(total=10, desc="import", unit="rec") as bar:
        bar.update(3)
        raise ValueError("bad line")
    assert lines(logs)[-1].startswith("import: stopped at 3 rec (")


def test_a_step_announced_late_says_when_it_started(logs, monkeypatch):
    clock = iter([0.0])  # the start, then 75 s later for every later reading
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock, 75.0))
    monkeypatch.setattr(progress_module, "QUICK_SECONDS", 2.0)
    with progress(total=2000, desc="pool", unit="rec") as bar:
        bar.update(2000)  # one chunk: the whole pool at once
    got = lines(logs)
    assert got == ["pool: started 2000 rec 75 s ago", "pool: done 2000 rec (75.0 s, 26.7 rec/s)"]


def test_steps_inside_another_stay_silent(logs):
    with progress(total=2, desc="pool") as outer:
        for _ in range(2):
            for _ in progress(range(100), desc="embedding"):
                pass
            outer.update()
    assert not any(line.startswith("embedding") for line in lines(logs))
    assert lines(logs)[-1].startswith("pool: done 2")


def test_quiet_or_disabled_is_silent_everywhere(logs, monkeypatch):
    assert isinstance(progress(total=3, enabled=False), NullProgress)
    monkeypatch.setenv(progress_module.QUIET_ENV, "1")
    monkeypatch.setattr(progress_module, "on_terminal", lambda: True)
    bar = progress(range(3), desc="quiet")
    assert isinstance(bar, NullProgress) and list(bar) == [0, 1, 2] and bar.n == 3
    assert lines(logs) == []


def test_a_terminal_gets_a_tqdm_bar(monkeypatch):
    from tqdm import tqdm

    monkeypatch.delenv(progress_module.QUIET_ENV, raising=False)
    monkeypatch.setattr(progress_module, "on_terminal", lambda: True)
    bar = progress(total=3, desc="bar")
    assert isinstance(bar, tqdm)
    bar.close()


def test_every_verb_takes_quiet():
    import typer

    command = typer.main.get_command(app)
    for verb in VERBS:
        names = {o for p in command.commands[verb].params for o in getattr(p, "opts", [])}
        assert "--quiet" in names, verb
    testbed = command.commands["testbed"].commands["build"]
    assert "--quiet" in {o for p in testbed.params for o in p.opts}


@pytest.mark.parametrize("quiet", [False, True])
def test_a_logged_cli_run_writes_a_few_lines(tmp_path, quiet):
    """The issue's case: a 300-pick K-center into a log file wrote ~150 lines of bar."""
    x = np.random.default_rng(0).standard_normal((2000, 8)).astype(np.float32)
    np.save(tmp_path / "e.npy", x)
    args = ["kcenter", "--embeddings", tmp_path / "e.npy", "--k", "300"]
    args += ["--out", tmp_path / "p.json", *(["--quiet"] if quiet else [])]
    # a K-center this small is over in well under QUICK_SECONDS: log it all the same
    code = "import taskexpert.progress as p; p.QUICK_SECONDS = 0; import taskexpert.cli; "
    code += "taskexpert.cli.main()"
    env = {k: v for k, v in os.environ.items() if k != progress_module.QUIET_ENV}
    run = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    logged = [line for line in run.stderr.splitlines() if "k-center" in line]
    assert len(logged) == (0 if quiet else 11), run.stderr
    assert "\r" not in run.stderr
