"""One adapter per family, and no guessers: behavioural tests on what scoring already has.

Three tests, any of which joins two adapters:
- weight cosine (diversity.py) at the near-duplicate threshold: exact and rescaled copies
  (cosine 1: the deltas are normalised);
- the centered weight similarity (diversity.py: the updates net of the bank's mean update):
  a member of the same family trained separately (another seed or rank). Plain cosine cannot
  see it, since every adapter of one base shares a common part (standard testbed: twins
  0.16-0.24, unrelated pairs up to 0.17); net of that part, twins measured 0.063-0.26 and
  unrelated pairs at most 0.051 on six banks (docs/design.md, Stage 1, 1b), a thin gap that
  the default threshold splits. It holds whether or not the twins solve the target, where
  the K-shot behaviour below says nothing (two reverse experts on reverse_and_add, neither
  solving it: generations 0.74 alike, as alike as unrelated pairs);
- behaviour on the target's K-shot: two adapters that write the same text for the K-shot
  prompts do the same thing there (generation similarity 0.96-0.98 for an expert and its
  twin where they solve the target, at most 0.85 for any other pair that is not two answer
  guessers).

A guesser answers without the reasoning. The answer-only kind predicts the worked rationales
worse than the base model (grouping's drop_above_base_perplexity); the format-mimic predicts
them as well as the expert but its right answers come with rationales of other problems, so
they match the K-shot's worked rationales clearly less than the best adapter's right answers
do (0.85 against 0.98 on mc_add_quiz).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from difflib import SequenceMatcher
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from taskexpert.experts.diversity import SimilarityMatrix

MIN_SUPPORTED = 2  # right answers an adapter needs to serve as the rationale-match reference


def text_similarity(a: str, b: str) -> float:
    """0..1 similarity of two texts (difflib's ratio on characters, whitespace-trimmed)."""
    return SequenceMatcher(None, a.strip(), b.strip(), autojunk=False).ratio()


def generation_similarity(a: Sequence[str], b: Sequence[str]) -> float:
    """Mean per-prompt similarity of two adapters' generations for the same K-shot prompts."""
    if len(a) != len(b):
        raise ValueError(f"generations for {len(a)} and {len(b)} prompts cannot be compared")
    return float(np.mean([text_similarity(x, y) for x, y in zip(a, b)])) if a else 0.0


def rationale_match(
    generations: Sequence[str], correct: Sequence[bool], targets: Sequence[str]
) -> tuple[float | None, int]:
    """How well the rationales behind an adapter's right answers match the worked ones:
    the mean similarity over the items it answers right, and how many those are."""
    matched = [
        text_similarity(text, target)
        for text, right, target in zip(generations, correct, targets, strict=True)
        if right
    ]
    return (float(np.mean(matched)) if matched else None), len(matched)


def kshot_rationale_match(scores: Mapping, names: Sequence[str], task) -> dict | None:
    """rationale_match for each named adapter's scores (scoring.AdapterScore) over the K-shot
    items with a worked rationale (scoring.KShotTask); None when there are none: there is
    nothing to match."""
    keep = [i for i, has in enumerate(task.has_rationale) if has]
    if not keep:
        return None
    targets = [task.reasoning_targets[i] for i in keep]
    return {
        n: rationale_match(
            [scores[n].generations[i] for i in keep], [scores[n].correct[i] for i in keep], targets
        )
        for n in names
    }


def unsupported_answers(
    names: Sequence[str], match: Mapping[str, tuple[float | None, int]], margin: float
) -> dict[str, str]:
    """The adapters whose right answers come with rationales matching the worked ones less
    than the best-matching adapter's (one with at least MIN_SUPPORTED right answers) by more
    than `margin`: right for the wrong reasons, the format-mimic's signature."""
    scored = {n: match[n] for n in names if match[n][0] is not None}
    reference = {n: m for n, (m, k) in scored.items() if k >= MIN_SUPPORTED}
    if not reference:
        return {}
    best = max(reference, key=reference.get)
    limit = reference[best] - margin
    return {
        name: (
            f"dropped: guesser: its {count} right answer(s) come with rationales that match "
            f"the K-shot's worked ones {value:.2f}, below {best}'s {reference[best]:.2f} by "
            f"more than {margin:g} (right for the wrong reasons)"
        )
        for name, (value, count) in scored.items()
        if value < limit
    }


def same_family(
    a: str,
    b: str,
    weight_similarity: SimilarityMatrix | None,
    generations: Mapping[str, Sequence[str]] | None,
    weight_threshold: float | None,
    behaviour_threshold: float | None,
    centered_threshold: float | None = None,
) -> str | None:
    """Why `a` and `b` are one family (a phrase), or None: weight cosine at or above
    `weight_threshold` (a copy or rescaled copy), centered weight similarity at or above
    `centered_threshold` (trained on one task), or generations at least `behaviour_threshold`
    alike on the K-shot."""
    if weight_similarity is not None and weight_threshold is not None:
        cosine = weight_similarity(a, b)
        if cosine >= weight_threshold:
            return f"weight similarity {cosine:.3f}: a copy or rescaled copy"
    if weight_similarity is not None and centered_threshold is not None:
        centered = weight_similarity.centered_similarity(a, b)
        if centered is not None and centered >= centered_threshold:
            return (
                f"centered weight similarity {centered:.3f}: their updates share a direction "
                "the rest of the bank does not"
            )
    if generations is not None and behaviour_threshold is not None:
        alike = generation_similarity(generations[a], generations[b])
        if alike >= behaviour_threshold:
            return f"generations {alike:.2f} alike on the K-shot"
    return None


def one_per_family(
    ordered: Sequence[str],
    weight_similarity: SimilarityMatrix | None,
    generations: Mapping[str, Sequence[str]] | None,
    weight_threshold: float | None,
    behaviour_threshold: float | None,
    keep: int | None = None,
    centered_threshold: float | None = None,
) -> dict[str, str]:
    """Walk `ordered` (best first) and drop each adapter of the same family as one kept
    before it: the verdicts of the dropped ones. With `keep`, the walk stops once that many
    are kept (only the best can be chosen), so a large bank costs O(keep) comparisons per
    adapter walked, not O(bank)."""
    kept: list[str] = []
    dropped: dict[str, str] = {}
    for name in ordered:
        if keep is not None and len(kept) >= keep:
            break
        for other in kept:
            why = same_family(
                name,
                other,
                weight_similarity,
                generations,
                weight_threshold,
                behaviour_threshold,
                centered_threshold,
            )
            if why is not None:
                dropped[name] = f"dropped: same family as {other} ({why}), which scored better"
                break
        else:
            kept.append(name)
    return dropped
