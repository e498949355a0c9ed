"""`taskexpert kcenter` end to end through the typer app, and every bad-input case."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from typer.testing import CliRunner

from taskexpert.cli import app
from taskexpert.errors import InputError
from taskexpert.selection import kcenter_greedy

runner = CliRunner()


@pytest.fixture
def matrix_file(tmp_path):
    x = np.random.default_rng(0).standard_normal((60, 8)).astype(np.float32)
    path = tmp_path / "e.npy"
    np.save(path, x)
    return x, path


def run(*args):
    return runner.invoke(app, ["kcenter", *map(str, args)])


def test_writes_the_library_picks_and_timing(matrix_file, tmp_path):
    x, path = matrix_file
    (tmp_path / "init.json").write_text("[4, 9]")
    out = tmp_path / "picks.json"
    options = ["--initial", tmp_path / "init.json", "--metric", "cosine", "--out", out]
    result = run("--embeddings", path, "--k", 10, *options)
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["picks"] == kcenter_greedy(x, 10, initial=[4, 9], metric="cosine", progress=False)
    assert saved["seconds"] >= 0 and saved["initial"] == 2 and saved["storage"] == "float32"
    assert json.loads(result.stdout.strip().splitlines()[-1])["k"] == 10


def test_half_and_seed(matrix_file, tmp_path):
    x, path = matrix_file
    out = tmp_path / "picks.json"
    result = run("--embeddings", path, "--k", 5, "--seed", 3, "--half", "--out", out)
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["storage"] == "float16"
    assert saved["picks"] == kcenter_greedy(x, 5, seed=3, storage="float16", progress=False)


def write(tmp_path, name, payload):
    path = tmp_path / name
    if isinstance(payload, np.ndarray):
        np.save(path, payload, allow_pickle=True)
    elif isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        path.write_text(payload)
    return path


@pytest.mark.parametrize(
    "embeddings, initial, k, blamed, message",
    [
        (None, None, 61, "e.npy", "exceeds"),
        (np.zeros(5, np.float32), None, 1, "bad.npy", "2-D"),
        (np.zeros((4, 2), np.float64), None, 1, "bad.npy", "float32 or float16"),
        (np.array([{"a": 1}], dtype=object), None, 1, "bad.npy", "cannot read"),
        (pickle.dumps([1, 2]), None, 1, "bad.npy", "cannot read"),
        (b"", None, 1, "bad.npy", "cannot read"),
        (None, "[60]", 1, "init.json", "out of range"),
        (None, "[1, 1]", 1, "init.json", "twice"),
        (None, '{"a": 1}', 1, "init.json", "list of integer"),
        (None, "[1.5]", 1, "init.json", "list of integer"),
        (None, "[true]", 1, "init.json", "list of integer"),
        (None, "[1,", 1, "init.json", "not valid JSON"),
    ],
)
def test_bad_input_names_the_file_and_writes_nothing(
    matrix_file, tmp_path, embeddings, initial, k, blamed, message
):
    path = matrix_file[1] if embeddings is None else write(tmp_path, "bad.npy", embeddings)
    args = ["--embeddings", path, "--k", k, "--out", tmp_path / "picks.json"]
    if initial is not None:
        args += ["--initial", write(tmp_path, "init.json", initial)]
    result = run(*args)
    assert result.exit_code == 1
    assert isinstance(result.exception, InputError)
    assert blamed in str(result.exception) and message in str(result.exception)
    assert not list(tmp_path.glob("picks.json*")) and not list(tmp_path.glob(".picks.json*"))


def test_missing_files_are_input_errors(tmp_path):
    result = run("--embeddings", tmp_path / "none.npy", "--k", 1, "--out", tmp_path / "p.json")
    assert isinstance(result.exception, InputError) and "none.npy" in str(result.exception)
    np.save(tmp_path / "e.npy", np.zeros((3, 2), np.float32))
    options = ["--initial", tmp_path / "no.json", "--out", tmp_path / "p.json"]
    result = run("--embeddings", tmp_path / "e.npy", "--k", 1, *options)
    assert isinstance(result.exception, InputError) and "no.json" in str(result.exception)


def test_unknown_metric_is_a_usage_error(matrix_file, tmp_path):
    result = run(
        "--embeddings", matrix_file[1], "--k", 1, "--metric", "l1", "--out", tmp_path / "p"
    )
    assert result.exit_code == 2
