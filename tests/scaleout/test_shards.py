"""Shard files and their index, the Ray address check, and that nothing imports Ray without
--ray. No cluster is started here."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from taskexpert.errors import InputError
from taskexpert.scaleout.cluster import check_reachable, ray_cluster
from taskexpert.scaleout.shards import (
    Shard,
    matrix_shards,
    open_shards,
    split_rows,
    write_index,
    write_shard,
)


def test_row_ranges_are_contiguous_and_start_on_the_chunk_grid():
    ranges = split_rows(10_000, 3, align=128)
    assert ranges[0][0] == 0 and ranges[-1][1] == 10_000
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(lo % 128 == 0 for lo, _ in ranges) and len(ranges) == 3
    assert split_rows(100, 4, align=128) == [(0, 100)]  # under one chunk: one shard
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    shards = matrix_shards(x, 3)
    assert np.array_equal(np.concatenate([s.open() for s in shards]), x)


def test_a_shard_of_another_dimension_is_named(tmp_path):
    write_shard(tmp_path, 0, np.zeros((4, 8), np.float32))
    write_shard(tmp_path, 1, np.zeros((3, 6), np.float32))
    entries = [
        {"file": "shard-00000.npy", "start": 0, "rows": 4},
        {"file": "shard-00001.npy", "start": 4, "rows": 3},
    ]
    write_index(tmp_path, "enc", entries)
    with pytest.raises(InputError, match="dimension 6 differs from 8") as info:
        open_shards(tmp_path)
    assert str(info.value.path).endswith("shard-00001.npy") and info.value.field == "dim"
    write_shard(tmp_path, 1, np.zeros((2, 8), np.float32))
    with pytest.raises(InputError, match="does not hold the 3 rows"):
        open_shards(tmp_path)
    write_shard(tmp_path, 1, np.ones((3, 8), np.float32))
    shards, dim = open_shards(tmp_path)
    assert dim == 8 and [s.start for s in shards] == [0, 4] and shards[1].open().sum() == 24
    assert isinstance(shards[0], Shard)


def test_an_address_nobody_answers_fails_fast_and_names_it():
    pytest.importorskip("ray", reason="Ray is the optional extra taskexpert[ray]")
    with socket_closed_port() as port:
        began = time.perf_counter()
        with pytest.raises(InputError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
            with ray_cluster(f"127.0.0.1:{port}", timeout=2):
                pass
        assert time.perf_counter() - began < 10
    with pytest.raises(InputError, match="not 'local', 'auto'"):
        check_reachable("nowhere")


class socket_closed_port:
    """A local port nothing listens on (bound, then released)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc) -> None:
        return None


NO_RAY = """
import sys, json
import numpy as np
from typer.testing import CliRunner
from taskexpert.cli import app
np.save(sys.argv[1] + '/e.npy', np.random.default_rng(0).normal(size=(50, 4)).astype('float32'))
r = CliRunner().invoke(app, ['kcenter', '--embeddings', sys.argv[1] + '/e.npy', '--k', '3',
                             '--out', sys.argv[1] + '/p.json', '--quiet'])
assert r.exit_code == 0, r.output
import taskexpert.recipes.select_data, taskexpert.recipes.select_experts
import taskexpert.recipes.diverseevol, taskexpert.recipes.run, taskexpert.experts.distributed
print(json.dumps(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))))
"""


def test_without_ray_nothing_imports_it(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", NO_RAY, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
