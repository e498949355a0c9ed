"""Rows a diversity sampler should leave out: far in embedding space, or high in loss.

K-center greedy picks the point farthest from everything chosen so far, which is exactly where
noise lives: on the testbed, 2% noise records made up 20% of DiverseEvol's K-center subsets
(random picks: 2%). A row's outlyingness here is its distance to the nearest row of a random
sample of the pool (itself excluded), one streaming pass, O(N) memory: a row far from every
sampled row sits in a region that the sample, and so the pool, barely populates. Noise that
is dense (many alike records) is not far from the sample; `high_loss_rows` finds it by the
base model's loss instead.
"""

from __future__ import annotations

import numpy as np

from taskexpert.errors import InputError
from taskexpert.selection.kcenter import default_chunk_rows

DEFAULT_SAMPLE = 512


def sample_distance(
    embeddings: np.ndarray,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    chunk_size: int | None = None,
) -> np.ndarray:
    """Euclidean distance of every row to its nearest row of a random sample (not itself)."""
    n, dim = embeddings.shape
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    anchors = np.asarray(embeddings[picked], dtype=np.float32)
    anchor_sq = (anchors * anchors).sum(axis=1)
    slot = np.full(n, -1, np.int64)  # each row's column among the anchors, -1 if not sampled
    slot[picked] = np.arange(len(picked))
    rows = chunk_size or default_chunk_rows(dim)
    out = np.empty(n, np.float32)
    for lo in range(0, n, rows):
        block = np.asarray(embeddings[lo : lo + rows], dtype=np.float32)
        sq = (block * block).sum(axis=1)[:, None] + anchor_sq[None, :] - 2.0 * block @ anchors.T
        own = slot[lo : lo + len(block)]
        mine = np.flatnonzero(own >= 0)
        sq[mine, own[mine]] = np.inf  # a sampled row is not its own neighbour
        out[lo : lo + len(block)] = np.sqrt(np.maximum(sq.min(axis=1), 0.0))
    return out


def far_outliers(
    embeddings: np.ndarray,
    share: float,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    chunk_size: int | None = None,
) -> np.ndarray:
    """Indices (sorted) of the `share` of rows farthest from the sampled pool, none for 0."""
    if not 0.0 <= share < 1.0:
        raise InputError(f"outlier share must be in [0, 1), got {share}", field="outlier_share")
    count = int(round(share * len(embeddings)))
    if count == 0:
        return np.empty(0, np.int64)
    distance = sample_distance(embeddings, sample, seed, chunk_size)
    return np.sort(np.argsort(-distance, kind="stable")[:count]).astype(np.int64)


def high_loss_rows(losses: np.ndarray, z: float) -> np.ndarray:
    """Indices (sorted) of the rows whose loss sits in the upper tail: a modified z-score
    0.6745 (loss - median) / MAD above `z` (Iglewicz and Hoaglin's outlier rule; 3.5 is their
    usual cut). None for z = 0, or when the losses have no spread.

    Why: embedding distance misses noise that is dense (word salad, letters spelled out all
    alike), but such records are far less predictable to the model than the rest of the pool.
    Only the tail goes: unlike a fixed share, a clean pool loses nothing. Hard but genuine
    records are also high-loss, so the cut should sit well above the usual 3.5
    (docs/design.md, DiverseEvol)."""
    if z < 0:
        raise InputError(f"loss outlier z must be >= 0, got {z}", field="loss_outlier_z")
    losses = np.asarray(losses, dtype=np.float64)
    if z == 0 or losses.size == 0:
        return np.empty(0, np.int64)
    if not np.isfinite(losses).all():
        raise InputError("per-record losses contain NaN or inf (a diverged model?)", field="losses")
    median = np.median(losses)
    mad = np.median(np.abs(losses - median))
    if mad == 0:
        return np.empty(0, np.int64)
    return np.flatnonzero(0.6745 * (losses - median) / mad > z).astype(np.int64)
