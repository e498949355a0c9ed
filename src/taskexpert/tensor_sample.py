"""Evenly spaced positions in a flattened tensor, computed exactly in integers.

Why: base-model fingerprints sample a few weight values per tensor. `torch.linspace` works in
float32, which holds integers exactly only up to 2**24: for a larger tensor (SmolLM2's
embedding has 28.3M values) the last position rounds up to numel itself and indexing fails,
and the positions in between drift. Integer arithmetic has neither problem.
"""

from __future__ import annotations

import torch


def spaced_indices(numel: int, count: int, device=None) -> torch.Tensor:
    """`count` int64 positions from 0 to numel - 1, evenly spaced (floor), first and last
    included; a tensor of one value gives `count` zeros."""
    if numel < 1 or count < 1:
        raise ValueError(f"need numel >= 1 and count >= 1, got {numel} and {count}")
    steps = torch.arange(count, dtype=torch.int64, device=device)
    return steps * (numel - 1) // max(count - 1, 1)


def legacy_float_indices(numel: int, count: int) -> torch.Tensor:
    """The positions the fingerprints used before (float32 linspace, truncated), clamped into
    range: only to recognise fingerprints recorded by earlier versions."""
    index = torch.linspace(0, numel - 1, count).long()
    return index.clamp_(0, numel - 1)
