"""Bank-wide adapter similarity, computed once from the LoRA factors (docs/design.md Stage 1).

The default compares what an adapter does, its update dW = s*B*A, not how it happens to be
factored: <B1 A1, B2 A2>_F = tr((B1^T B2)(A2 A1^T)) needs only r x r products, so the out x in
matrix is never formed and two factorisations of one update (B Q, Q^-1 A) score identical.
For a whole bank the factors of one module are stacked, so a module costs two Gram matrices
(stacked B^T B and A A^T) whose elementwise product, summed block by block, gives every
pairwise inner product at once. The paper's variant (cosine of the A factors plus cosine of
the B factors) is kept for fidelity; it is not invariant to refactoring.

The centered similarity (`SimilarityMatrix.centered`) is the cosine of the updates net of the
bank's mean update of that layer, from the same Gram matrix, double-centered: every adapter
trained on one base shares a common part (answer format, prompt template), which makes two
unrelated adapters look as alike as two trained separately on one task (standard testbed:
delta cosine 0.16-0.24 for such twins against up to 0.17 for unrelated pairs). Net of it, the
twins keep their task's direction and the unrelated pairs lose what they shared (0.063-0.26
against at most 0.051 on six banks). It needs a bank of MIN_CENTERED adapters of a layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import torch

from taskexpert.bank import LoraAdapter, LoraModule
from taskexpert.progress import progress as progress_bar

SimilarityMethod = Literal["delta", "factors"]
METHODS: tuple[str, ...] = ("delta", "factors")
# Adapters of one layer below which the bank's mean update is no "common part": with two, each
# centered update is the other's negative
MIN_CENTERED = 5


@dataclass
class SimilarityMatrix:
    """Pairwise adapter similarity: names in bank order and a symmetric matrix over them."""

    names: list[str]
    matrix: np.ndarray
    method: str
    shared_modules: np.ndarray
    # mean over the layers with MIN_CENTERED adapters or more of the centered delta cosine
    # (module docstring); NaN for a pair that shares no such layer; None when not computed
    centered: np.ndarray | None = None

    @cached_property
    def _index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def __call__(self, a: str, b: str) -> float:
        return float(self.matrix[self._index[a], self._index[b]])

    def centered_similarity(self, a: str, b: str) -> float | None:
        """The centered similarity of `a` and `b`, None where the bank gives none."""
        if self.centered is None:
            return None
        value = float(self.centered[self._index[a], self._index[b]])
        return None if np.isnan(value) else value

    def subset(self, names: Sequence[str]) -> SimilarityMatrix:
        index = [self._index[n] for n in names]
        grid = np.ix_(index, index)
        centered = None if self.centered is None else self.centered[grid]
        return SimilarityMatrix(
            list(names), self.matrix[grid], self.method, self.shared_modules[grid], centered
        )

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "names": list(self.names),
            "matrix": [[round(float(v), 6) for v in row] for row in self.matrix],
        }


def delta_inner(a: LoraModule, b: LoraModule) -> float:
    """<dW_a, dW_b>_F exactly, in r x r space: s_a s_b * sum((B_a^T B_b) * (A_a A_b^T))."""
    gram_b = a.B.double().T @ b.B.double()
    gram_a = a.A.double() @ b.A.double().T
    return float(a.scaling * b.scaling * (gram_b * gram_a).sum())


def delta_cosine(a: LoraModule, b: LoraModule) -> float:
    """Cosine of two updates of the same layer (0 when either update is zero)."""
    norm = (delta_inner(a, a) * delta_inner(b, b)) ** 0.5
    return delta_inner(a, b) / norm if norm > 0 else 0.0


def _block_inner(left: list[LoraModule], right: list[LoraModule]) -> torch.Tensor:
    """<dW_i, dW_j> for every i in left, j in right: block sums of (B_l^T B_r) * (A_l A_r^T)."""
    products = (
        torch.cat([m.scaling * m.B.double() for m in left], dim=1).T
        @ torch.cat([m.scaling * m.B.double() for m in right], dim=1)
    ) * (torch.cat([m.A.double() for m in left]) @ torch.cat([m.A.double() for m in right]).T)
    row_owner = torch.repeat_interleave(
        torch.arange(len(left)), torch.tensor([m.rank for m in left])
    )
    col_owner = torch.repeat_interleave(
        torch.arange(len(right)), torch.tensor([m.rank for m in right])
    )
    rows = torch.zeros(len(left), products.shape[1], dtype=torch.float64)
    rows.index_add_(0, row_owner, products)
    blocks = torch.zeros(len(left), len(right), dtype=torch.float64)
    blocks.index_add_(1, col_owner, rows)
    return blocks


def _module_delta_gram(modules: list[LoraModule], chunk: int = 128) -> np.ndarray:
    """All pairwise <dW_i, dW_j> of one layer; chunked: memory O((chunk r)^2), not O((n r)^2)."""
    n = len(modules)
    gram = torch.zeros(n, n, dtype=torch.float64)
    for i in range(0, n, chunk):
        for j in range(i, n, chunk):
            block = _block_inner(modules[i : i + chunk], modules[j : j + chunk])
            gram[i : i + chunk, j : j + chunk] = block
            gram[j : j + chunk, i : i + chunk] = block.T
    return gram.numpy()


def centered_gram(gram: np.ndarray) -> np.ndarray:
    """<dW_i - m, dW_j - m> with m the mean update, from the inner products alone."""
    row_mean = gram.mean(axis=0, keepdims=True)
    return gram - row_mean - row_mean.T + gram.mean()


def _padded_factor(matrix: torch.Tensor, rank: int, rank_dim: int) -> torch.Tensor:
    """Zero-pad the rank dimension so factors of different ranks can be compared entrywise."""
    missing = rank - matrix.shape[rank_dim]
    if missing == 0:
        return matrix
    pad = (0, missing) if rank_dim == 1 else (0, 0, 0, missing)
    return torch.nn.functional.pad(matrix, pad)


def _module_factor_cosines(modules: list[LoraModule]) -> np.ndarray:
    """The paper's |cos(A_a, A_b)| + |cos(B_a, B_b)| on flattened factors (rank zero-padded)."""
    rank = max(m.rank for m in modules)
    flat_a = torch.stack([_padded_factor(m.A.double(), rank, 0).flatten() for m in modules])
    flat_b = torch.stack([_padded_factor(m.B.double(), rank, 1).flatten() for m in modules])
    cos_a = _cosines_from_gram((flat_a @ flat_a.T).numpy())
    cos_b = _cosines_from_gram((flat_b @ flat_b.T).numpy())
    return np.abs(cos_a) + np.abs(cos_b)


def _cosines_from_gram(gram: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    outer = np.outer(norms, norms)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(outer > 0, gram / np.where(outer > 0, outer, 1.0), 0.0)
    return np.clip(cos, -1.0, 1.0)


def similarity_matrix(
    adapters: Mapping[str, LoraAdapter] | Sequence[LoraAdapter],
    method: SimilarityMethod = "delta",
    progress: bool = False,
) -> SimilarityMatrix:
    """Mean over shared adapted modules of |cos(dW_a, dW_b)| (or the paper's factor variant),
    and the centered similarity (module docstring) whatever the method.

    Pairs that share no module get similarity 0; the diagonal is the self-similarity
    (1 for "delta", 2 for "factors", whose two cosines are summed as in the paper).
    """
    if method not in METHODS:
        raise ValueError(f"unknown similarity method {method!r}; choose one of {METHODS}")
    items = list(adapters.values()) if isinstance(adapters, Mapping) else list(adapters)
    names = [a.name for a in items]
    n = len(items)
    total = np.zeros((n, n))
    shared = np.zeros((n, n), dtype=np.int64)
    centered_total = np.zeros((n, n))
    centered_count = np.zeros((n, n), dtype=np.int64)
    by_layer: dict[tuple[str, tuple[int, int]], list[int]] = {}
    for i, adapter in enumerate(items):
        for module_name, module in adapter.modules.items():
            shape = (module.A.shape[1], module.B.shape[0])
            by_layer.setdefault((module_name, shape), []).append(i)
    for (module_name, _), owners in progress_bar(
        sorted(by_layer.items()), desc="similarity", unit="module", enabled=progress
    ):
        modules = [items[i].modules[module_name] for i in owners]
        gram = _module_delta_gram(modules)
        cos = _cosines_from_gram(gram) if method == "delta" else _module_factor_cosines(modules)
        grid = np.ix_(owners, owners)
        total[grid] += np.abs(cos)
        shared[grid] += 1
        if len(owners) >= MIN_CENTERED:
            centered_total[grid] += _cosines_from_gram(centered_gram(gram))
            centered_count[grid] += 1
    with np.errstate(divide="ignore", invalid="ignore"):
        matrix = np.where(shared > 0, total / np.maximum(shared, 1), 0.0)
        centered = np.where(
            centered_count > 0, centered_total / np.maximum(centered_count, 1), np.nan
        )
    np.fill_diagonal(matrix, 1.0 if method == "delta" else 2.0)
    return SimilarityMatrix(names, matrix, method, shared, centered)
