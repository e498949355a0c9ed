"""Vendi score: its two limits (identical, orthogonal) and the agreement of both routes."""

from __future__ import annotations

import numpy as np
import pytest

from taskexpert.errors import InputError
from taskexpert.selection import vendi_score


@pytest.mark.parametrize("method", ["auto", "kernel", "covariance"])
def test_identical_rows_count_once(method):
    x = np.tile(np.array([[0.3, -1.0, 2.0]], np.float32), (20, 1))
    assert vendi_score(x, method=method) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("method", ["auto", "kernel", "covariance"])
def test_orthogonal_rows_count_each(method):
    x = np.eye(12)[:7] * np.arange(1, 8)[:, None]  # scale must not matter under cosine
    assert vendi_score(x, method=method) == pytest.approx(7.0, rel=1e-9)


def test_two_clusters_score_two():
    x = np.array([[1.0, 0.0]] * 10 + [[0.0, 5.0]] * 10)
    assert vendi_score(x) == pytest.approx(2.0, rel=1e-9)


@pytest.mark.parametrize("n, dim", [(50, 8), (8, 50), (30, 30)])
def test_kernel_and_covariance_routes_agree(n, dim):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, dim)).astype(np.float32) + 0.5
    kernel = vendi_score(x, method="kernel")
    assert 1.0 < kernel < min(n, dim) + 1e-9
    assert vendi_score(x, method="covariance") == pytest.approx(kernel, rel=1e-9)


def test_covariance_route_streams_chunks(monkeypatch):
    import taskexpert.selection.vendi as vendi

    x = np.random.default_rng(1).standard_normal((103, 5))
    whole = vendi_score(x, method="covariance")
    monkeypatch.setattr(vendi, "CHUNK_ROWS", 10)
    assert vendi_score(x, method="covariance") == pytest.approx(whole, rel=1e-12)


@pytest.mark.parametrize(
    "x, message",
    [
        (np.zeros(4), "2-D"),
        (np.array([[1.0, 0.0], [0.0, 0.0]]), "row 1 is zero"),
        (np.array([[1.0, np.nan]]), "row 0"),
    ],
)
def test_bad_input_is_a_clear_error(x, message):
    with pytest.raises(InputError, match=message):
        vendi_score(x)


def test_unknown_method_is_an_error():
    with pytest.raises(InputError, match="method"):
        vendi_score(np.eye(2), method="exact")
