"""Kill -9 and resume (issue 13): run the real CLI in a subprocess, let it get to a point drawn
from a seed, SIGKILL it, check what it left behind, and run the same command again.

- `kill_midway` starts `taskexpert <args>` in a fresh interpreter (its own process group, one
  torch thread, output to a log file), polls `reached()` until the work has got to the point
  the test drew from `random.Random(seed)` (the n-th checkpoint, cache shard, scored adapter,
  round or build phase), sleeps a random fraction of a small `window` drawn from the same
  generator (so the kill lands inside a step, inside a write, or between them) and SIGKILLs
  the whole process group, as the OOM killer or `kill -9` of a job would. A progress marker
  rather than a time: the point is reproducible per seed, another one for another seed, and
  still mid-work on a slower or faster machine.
- `assert_no_partial_files` is the "never half-written" check: every file under a final name
  (no `.*.tmp` component) parses whole: JSON, JSONL, safetensors, .npy, .pt.
- `rerun` runs the same command to completion: in this process through the typer app (the
  kill is what needs a real process; the ~8 s of torch/transformers imports a second
  interpreter pays test nothing more), or in a fresh interpreter given `subprocess_log`.

Importable from any test (`from kill_resume import ...`), like tiny_models.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

import taskexpert
from taskexpert.io import is_temp_name

SRC = Path(taskexpert.__file__).resolve().parents[1]
CLI_CODE = "import sys; from taskexpert.cli import main; sys.argv[0] = 'taskexpert'; main()"


def cli_env(**extra: str) -> dict[str, str]:
    """The child's environment: this checkout's package first, one torch thread, and
    otherwise this process's (offline flags, say, end up in saved tokenizer configs)."""
    path = os.environ.get("PYTHONPATH", "")
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), path) if p),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **extra,
    }


def cli_command(args: Sequence[object]) -> list[str]:
    return [sys.executable, "-c", CLI_CODE, *map(str, args)]


@dataclass
class Kill:
    """Where a kill landed: `delay` seconds after the drawn point was reached (`reached_at`
    seconds after launch); `where` is the test's description of the point and what it left."""

    delay: float
    reached_at: float
    log: str
    where: str = ""

    def __str__(self) -> str:
        return (
            f"kill point reached {self.reached_at:.1f}s after launch, SIGKILL "
            f"{self.delay:.3f}s later: {self.where}"
        )


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def kill_midway(
    args: Sequence[object],
    reached: Callable[[], bool],
    *,
    rng: random.Random,
    window: float,
    log: Path,
    timeout: float = 300.0,
    env: dict[str, str] | None = None,
) -> Kill:
    """Run the CLI until `reached()`, then SIGKILL it `rng.random() * window` seconds later.
    Fails if it exits before that point or before the kill."""
    delay = rng.random() * window
    log.parent.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with open(log, "w") as handle:
        process = subprocess.Popen(
            cli_command(args),
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env or cli_env(),
            start_new_session=True,  # its own group: workers it may spawn die with it
        )
    try:
        while not reached():
            if process.poll() is not None:
                pytest.fail(f"exited ({process.returncode}) before the kill point:\n{_tail(log)}")
            if time.monotonic() - began > timeout:
                pytest.fail(f"no kill point within {timeout:.0f}s:\n{_tail(log)}")
            time.sleep(0.002)
        reached_at = time.monotonic() - began
        time.sleep(delay)
        finished = process.poll() is not None
        if not finished:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if finished:
        pytest.fail(
            f"the run finished ({process.returncode}) {delay:.3f}s after the kill point, "
            f"before the kill: draw an earlier point or a shorter window\n{_tail(log)}"
        )
    return Kill(delay, reached_at, _tail(log))


def rerun(
    args: Sequence[object],
    *,
    subprocess_log: Path | None = None,
    timeout: float = 600.0,
) -> str:
    """Run the same command to completion and return its output (exit code 0 required): in
    this process, or in a fresh interpreter when `subprocess_log` names a log file."""
    if subprocess_log is None:
        from typer.testing import CliRunner

        from taskexpert.cli import app

        result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output
    with open(subprocess_log, "w") as handle:
        code = subprocess.run(
            cli_command(args),
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=cli_env(),
            timeout=timeout,
            check=False,
        ).returncode
    assert code == 0, _tail(subprocess_log)
    return subprocess_log.read_text(errors="replace")


# ---- check (b): nothing half-written under a final name -----------------------------------


def _check_file(path: Path) -> None:
    name = path.name
    if name.endswith(".jsonl"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    json.loads(line)
                except ValueError as exc:
                    raise AssertionError(f"{path}:{number}: half-written JSONL ({exc})") from None
    elif name.endswith(".json"):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise AssertionError(f"{path}: half-written JSON ({exc})") from None
    elif name.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                handle.get_tensor(key)
    elif name.endswith(".npy"):
        import numpy as np

        np.load(path)  # reads the whole array: a short file fails
    elif name.endswith(".pt"):
        import torch

        torch.load(path, weights_only=False)


def final_files(root: Path) -> list[Path]:
    """Every file under `root` with no temp-named component (what readers may open)."""
    found = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not is_temp_name(d)]
        found += [Path(directory) / f for f in files if not is_temp_name(f)]
    return sorted(found)


def assert_no_partial_files(root: Path) -> int:
    """Check (b) after a kill: every file under a final name is whole. Returns how many."""
    files = final_files(root)
    for path in files:
        _check_file(path)
    return len(files)


def temp_entries(root: Path) -> list[Path]:
    """Temp files and directories left anywhere under `root`."""
    found = []
    for directory, dirs, files in os.walk(root):
        found += [Path(directory) / n for n in dirs + files if is_temp_name(n)]
    return found


def assert_json_close(actual, expected, *, rtol: float, atol: float, path: str = "$") -> None:
    """Same JSON structure; numbers within rtol/atol, everything else equal."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), path
        for key, value in expected.items():
            assert_json_close(actual[key], value, rtol=rtol, atol=atol, path=f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), path
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_json_close(a, e, rtol=rtol, atol=atol, path=f"{path}[{index}]")
    elif isinstance(expected, float) and not isinstance(actual, bool):
        assert actual == pytest.approx(expected, rel=rtol, abs=atol, nan_ok=True), path
    else:
        assert actual == expected, path


def without(data, keys: set[str]):
    """`data` with every dict entry named in `keys` removed, at any depth (timings, say)."""
    if isinstance(data, dict):
        return {k: without(v, keys) for k, v in data.items() if k not in keys}
    if isinstance(data, list):
        return [without(v, keys) for v in data]
    return data
