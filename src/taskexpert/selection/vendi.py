"""Vendi score, DiverseEvol's measure of subset diversity: the effective number of distinct items.

exp of the Shannon entropy of the eigenvalues of K/n, K = X^ X^T the cosine kernel of the n
L2-normalised rows. When n > d the d x d matrix X^T X^ / n has the same nonzero eigenvalues,
so the score costs O(n d^2) and streams the rows, never forming the n x n kernel.
"""

from __future__ import annotations

import numpy as np

from taskexpert.errors import InputError

METHODS = ("auto", "kernel", "covariance")
CHUNK_ROWS = 8192


def vendi_score(embeddings: np.ndarray, method: str = "auto") -> float:
    """Vendi score (1 for identical rows, n for n orthogonal rows) under the cosine kernel.

    `method`: "kernel" eigendecomposes the n x n K/n, "covariance" the d x d X^T X^ / n, and
    "auto" takes the smaller of the two; all give the same value up to rounding.
    """
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    matrix = np.asarray(embeddings)
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise InputError(
            f"embeddings must be a non-empty 2-D (n, d) array, got shape {matrix.shape}",
            field="embeddings",
        )
    n, dim = matrix.shape
    if method == "kernel" or (method == "auto" and n <= dim):
        unit = _unit_rows(matrix, 0)
        eigenvalues = np.linalg.eigvalsh(unit @ unit.T / n)
    else:
        gram = np.zeros((dim, dim), np.float64)
        for lo in range(0, n, CHUNK_ROWS):
            unit = _unit_rows(matrix[lo : lo + CHUNK_ROWS], lo)
            gram += unit.T @ unit
        eigenvalues = np.linalg.eigvalsh(gram / n)
    return _exp_entropy(eigenvalues)


def _unit_rows(rows: np.ndarray, offset: int) -> np.ndarray:
    """Rows as float64 unit vectors; a zero or non-finite row has no cosine, so it is an error."""
    rows = np.asarray(rows, dtype=np.float64)
    norms = np.linalg.norm(rows, axis=1)
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        raise InputError(
            f"row {offset + int(np.argmax(bad))} is zero or not finite; the cosine kernel needs "
            "nonzero finite rows",
            field="embeddings",
        )
    return rows / norms[:, None]


def _exp_entropy(eigenvalues: np.ndarray) -> float:
    """exp(-sum p log p) over the spectrum; round-off negatives and zeros contribute nothing."""
    p = eigenvalues[eigenvalues > 0]
    p = p / p.sum()  # trace(K/n) = 1 exactly; renormalise away the rounding
    return float(np.exp(-np.sum(p * np.log(p))))
