"""Uncertainty baselines of DiverseEvol: least-confidence, margin and entropy sampling.

As in the DiverseEvol reference code, every score is a mean over all token positions of the
training-format sequence (prompt and response), computed from the raw logits:

- least-confidence: mean of the max logit per position; the lowest are the least confident;
- margin: mean of (top-1 minus top-2 logit); the lowest are the most ambiguous;
- entropy: mean entropy of the next-token distribution; the highest are the most uncertain.

The reference runs one sequence at a time; here sequences are batched by length with padding
masks (pads never count) and the logits are reduced batch by batch, so only one batch of
logits (bounded by a token budget scaled to the vocabulary) is ever in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from taskexpert.errors import InputError
from taskexpert.lm_embed import padded_batches
from taskexpert.progress import progress as progress_bar

MEASURES = ("least-confidence", "margin", "entropy")
# Measures whose *highest* scores are picked first; the others are picked lowest first.
HIGHEST_FIRST = frozenset({"entropy"})
LOGIT_BUDGET = 1 << 25  # logits (tokens x vocab) per batch: 128 MiB of float32


def _check_measures(measures: Sequence[str]) -> None:
    unknown = [m for m in measures if m not in MEASURES]
    if unknown or not measures:
        raise InputError(
            f"unknown uncertainty measure {unknown[0] if unknown else None!r}; "
            f"use {', '.join(MEASURES)}",
            field="strategy",
        )


@torch.inference_mode()
def position_scores(logits: torch.Tensor, measures: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per-position scores (batch, seq) of each measure from logits (batch, seq, vocab)."""
    logits = logits.float()
    scores: dict[str, torch.Tensor] = {}
    if "margin" in measures:
        top = torch.topk(logits, k=min(2, logits.shape[-1]), dim=-1).values
        scores["margin"] = top[..., 0] - top[..., -1]
        if "least-confidence" in measures:
            scores["least-confidence"] = top[..., 0]
    elif "least-confidence" in measures:
        scores["least-confidence"] = logits.max(dim=-1).values
    if "entropy" in measures:
        log_p = torch.log_softmax(logits, dim=-1)
        scores["entropy"] = -(log_p.exp() * log_p).sum(dim=-1)
    return scores


def uncertainty_scores(
    model: torch.nn.Module,
    sequences: Iterable[Sequence[int]],
    total: int,
    *,
    measures: Sequence[str] = MEASURES,
    batch_size: int = 16,
    max_batch_tokens: int | None = None,
    pad_id: int = 0,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """{measure: (total,) float32} mean per-position score of each token-id sequence."""
    _check_measures(measures)
    vocab = int(model.get_output_embeddings().weight.shape[0])
    budget = max_batch_tokens or max(1, LOGIT_BUDGET // max(vocab, 1))
    out = {m: np.empty(total, dtype=np.float32) for m in measures}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    seen = 0
    bar = progress_bar(total=total, desc="uncertainty", unit="text", enabled=progress)
    try:
        with torch.inference_mode(), bar:
            for rows, input_ids, attention in padded_batches(
                sequences, batch_size=batch_size, max_batch_tokens=budget, pad_id=pad_id
            ):
                if rows.max() >= total:
                    raise InputError(f"more than {total} sequences were given", field="total")
                mask = attention.to(device)
                logits = model(input_ids=input_ids.to(device), attention_mask=mask).logits
                weights = mask.to(torch.float32)
                count = weights.sum(dim=1)
                for name, per_position in position_scores(logits, measures).items():
                    out[name][rows] = ((per_position * weights).sum(dim=1) / count).cpu().numpy()
                seen += len(rows)
                bar.update(len(rows))
    finally:
        model.train(was_training)
    if seen != total:
        raise InputError(f"got {seen} sequences, expected {total}", field="total")
    return out


def most_uncertain(scores: np.ndarray, measure: str, k: int) -> np.ndarray:
    """Positions of the k most uncertain scores (ties to the lowest position), most first."""
    _check_measures([measure])
    scores = np.asarray(scores, dtype=np.float64)
    if not 0 <= k <= len(scores):
        raise InputError(f"cannot pick {k} of {len(scores)} candidates", field="k")
    if np.isnan(scores).any():
        raise InputError("uncertainty scores contain NaN (a diverged model?)", field="scores")
    key = -scores if measure in HIGHEST_FIRST else scores
    return np.argsort(key, kind="stable")[:k]
