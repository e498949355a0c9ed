"""Was the mixture worth it? Mean scores with bootstrap intervals and one honest sentence.

Every method is scored on the same test items, some over several seeds. Two things make a
score uncertain: which items happened to be in the test set, and which seed a trained method
happened to get. The interval is a two-level bootstrap: each replicate resamples the items
(one draw shared by all methods, so comparisons are paired: an easy item is easy for every
method) and, per method, its seeds. The difference between two methods is bootstrapped the
same way, replicate by replicate, which is far tighter than comparing two separate intervals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import numpy as np
from pydantic import BaseModel

# Part of a run's verdict stage key: bump when verdict.json gains or changes a field, so a
# resumed run recomputes its verdict (cheap: no model runs) instead of keeping an older one.
VERDICT_FORMAT = 2  # 2: versus_base, cautions, winner_rule

# Methods that need no seed: one run is all there is, so one seed says nothing is missing.
DETERMINISTIC = frozenset({"base", "best_adapter", "uniform_merge"})

LABELS: dict[str, str] = {
    "moe": "the mixture",
    "plain_lora": "the plain LoRA",
    "base": "the base model",
    "best_adapter": "the best bank adapter",
    "uniform_merge": "the uniform merge",
    "kshot_lora": "the K-shot LoRA",
    "matched_lora": "the parameter-matched LoRA",
    "majority": "the K-shot's commonest answer",
}


def label(name: str) -> str:
    """The display name of a method (unknown names shown as they are)."""
    return LABELS.get(name, name)


class MethodScore(BaseModel):
    """One method's mean score over seeds and items, its interval, and each seed's mean."""

    method: str
    mean: float
    low: float
    high: float
    per_seed: list[float]
    n_items: int
    detail: str = ""  # what a reference row stands for, e.g. 'always "yes" (31 of 50 ...)'


class Comparison(BaseModel):
    """`method` against `baseline` on paired items: the difference and whether it is noise."""

    method: str
    baseline: str
    diff: float
    low: float
    high: float
    within_noise: bool
    sentence: str

    @property
    def beats(self) -> bool:
        """`method` is above `baseline` beyond noise: the interval lies above 0."""
        return self.low > 0.0


WinnerRule = Literal["best", "simplest"]


class Verdict(BaseModel):
    """The whole answer: every method best first, the winner, the comparison that matters."""

    methods: list[MethodScore]
    winner: str
    comparison: Comparison | None
    sentence: str
    n_items: int
    confidence: float
    resamples: int
    warnings: list[str]
    # Model-free floors scored on the same items (e.g. `majority`): shown, never the winner;
    # `floor` compares the winner with the best of them.
    references: list[MethodScore] = []
    floor: Comparison | None = None
    # The winner against the untrained base model: a winner within noise of it is a run that
    # bought nothing measurable, whatever it beat otherwise (None when the base won or was
    # not scored).
    versus_base: Comparison | None = None
    # Why the winner may not be worth deploying, in words (`_cautions`); shown under the
    # table, in winner.json and in the report.
    cautions: list[str] = []
    # "best": the highest mean wins; "simplest": the first method in the caller's order (the
    # simplest) whose paired difference from the highest mean is within noise.
    winner_rule: WinnerRule = "best"


def _arrays(scores: Mapping[str, Sequence[Sequence[float]]]) -> dict[str, np.ndarray]:
    """(seeds, items) arrays; every run must cover the same items, else nothing is paired."""
    if not scores:
        raise ValueError("no methods to compare")
    arrays: dict[str, np.ndarray] = {}
    first: tuple[str, int, int] | None = None
    for name, runs in scores.items():
        if len(runs) == 0:
            raise ValueError(f"method {name!r} has no runs")
        for seed, run in enumerate(runs):
            if first is None:
                first = (name, seed, len(run))
            elif len(run) != first[2]:
                raise ValueError(
                    f"method {name!r} run {seed} scored {len(run)} test items but method "
                    f"{first[0]!r} run {first[1]} scored {first[2]}: every run must be scored "
                    "on the same test items in the same order"
                )
        array = np.asarray([list(run) for run in runs], dtype=np.float64)
        if not np.all(np.isfinite(array)):
            raise ValueError(f"method {name!r} has a score that is not a finite number")
        arrays[name] = array
    if first is None or first[2] == 0:
        raise ValueError("no test items were scored")
    return arrays


def _replicates(
    arrays: Mapping[str, np.ndarray], resamples: int, seed: int
) -> dict[str, np.ndarray]:
    """Each method's mean in every bootstrap replicate (items shared, seeds per method)."""
    rng = np.random.default_rng(seed)
    n_items = next(iter(arrays.values())).shape[1]
    # item draw as counts per replicate: (resamples, items); shared by every method
    item_counts = rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=resamples)
    result = {}
    for name, array in arrays.items():
        n_seeds = array.shape[0]
        per_seed = array @ item_counts.T / n_items  # (seeds, resamples)
        seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=resamples)
        result[name] = np.einsum("rs,sr->r", seed_counts, per_seed) / n_seeds
    return result


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_interval(
    values: Sequence[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """The interval `decide` gives one seed's per-item scores (same items drawn, same seed):
    for a floor scored after its run, without scoring the methods again."""
    boot = _replicates(_arrays({"one": [values]}), resamples, seed)["one"]
    return _interval(boot, confidence)


def _percent(confidence: float) -> str:
    return f"{confidence * 100:g}%"


def _compare(
    method: str,
    baseline: str,
    diff: float,
    low: float,
    high: float,
    confidence: float,
) -> Comparison:
    """The comparison and its sentence: who beats whom by how much, or that it is noise."""
    within = low <= 0.0 <= high
    pct = _percent(confidence)
    if within:
        sentence = (
            f"{label(method)} is within noise of {label(baseline)} (difference {diff:+.3f}, "
            f"{pct} interval {low:.3f} to {high:.3f})"
        )
    elif diff > 0:
        sentence = (
            f"{label(method)} beats {label(baseline)} by {diff:.3f} "
            f"({pct} interval {low:.3f} to {high:.3f})"
        )
    else:
        sentence = (
            f"{label(baseline)} beats {label(method)} by {-diff:.3f} "
            f"({pct} interval {-high:.3f} to {-low:.3f})"
        )
    return Comparison(
        method=method,
        baseline=baseline,
        diff=diff,
        low=low,
        high=high,
        within_noise=within,
        sentence=sentence,
    )


def _cautions(versus_base: Comparison | None, floor: Comparison | None) -> list[str]:
    """The winner within noise of the base model, or not clear of the model-free floor."""
    notes = []
    if versus_base is not None and versus_base.within_noise:
        notes.append(
            f"the winner is not shown to improve on the base model: {versus_base.sentence}"
        )
    if floor is not None and not floor.beats:
        notes.append(
            f"the winner does not clear the model-free floor beyond noise: {floor.sentence}"
        )
    return notes


def decide(
    scores: Mapping[str, Sequence[Sequence[float]]],
    *,
    method: str = "moe",
    baseline: str = "plain_lora",
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    min_items: int = 30,
    references: Mapping[str, tuple[Sequence[float], str]] | None = None,
    winner_rule: WinnerRule = "best",
) -> Verdict:
    """Score every method and say whether `method` beat `baseline` beyond noise.

    `scores[name]`: one list per seed of per-item scores, all over the same items in the same
    order (ValueError otherwise), simplest method first. The winner is the highest mean
    (`winner_rule` "best"; ties to the earlier method) or the earliest method within noise of
    the highest mean ("simplest": no more machinery than the test set can justify); the
    sentence says when it is within noise of what it is compared with. `references[name]`:
    (per-item scores, detail) of a floor that is no method (the K-shot's commonest answer);
    the sentence adds when the winner does not clear it beyond noise. Deterministic for a
    given `seed`.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, not {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, not {resamples}")
    references = dict(references or {})
    clash = sorted(set(references) & set(scores))
    if clash:
        raise ValueError(f"{clash[0]!r} is both a method and a reference")
    arrays = _arrays({**scores, **{name: [s] for name, (s, _) in references.items()}})
    n_items = next(iter(arrays.values())).shape[1]
    boot = _replicates(arrays, resamples, seed)

    def score(name: str) -> MethodScore:
        low, high = _interval(boot[name], confidence)
        per_seed = arrays[name].mean(axis=1)
        detail = references[name][1] if name in references else ""
        return MethodScore(
            method=name,
            mean=float(per_seed.mean()),
            low=low,
            high=high,
            per_seed=[float(v) for v in per_seed],
            n_items=n_items,
            detail=detail,
        )

    if winner_rule not in get_args(WinnerRule):
        raise ValueError(f"winner_rule must be one of {get_args(WinnerRule)}, not {winner_rule!r}")
    rows = [score(name) for name in scores]
    rows.sort(key=lambda row: -row.mean)  # stable: ties keep the caller's order
    floors = sorted((score(name) for name in references), key=lambda row: -row.mean)

    def paired(a: str, b: str) -> Comparison:
        diff = float(arrays[a].mean() - arrays[b].mean())
        low, high = _interval(boot[a] - boot[b], confidence)
        return _compare(a, b, diff, low, high, confidence)

    top = rows[0]
    winner = top
    if winner_rule == "simplest":
        # the first method the top does not beat beyond noise: its shortfall is noise
        name = next(n for n in scores if n == top.method or not paired(top.method, n).beats)
        winner = next(row for row in rows if row.method == name)

    comparison = None
    if method in arrays and baseline in arrays and method != baseline:
        comparison = paired(method, baseline)
        sentence = comparison.sentence
        if top.method not in (method, baseline):
            sentence += f"; the best score is {label(top.method)}'s ({top.mean:.3f})"
    elif len(rows) > 1:
        runner_up = rows[1]
        versus = paired(top.method, runner_up.method)
        sentence = f"{label(top.method)} scores best ({top.mean:.3f})"
        if versus.within_noise:
            sentence += f", but {versus.sentence}"
        else:
            sentence += f": {versus.sentence}"
    else:
        sentence = f"{label(top.method)} is the only method ({top.mean:.3f})"
    if winner is not top:
        sentence += (
            f"; the winner is {label(winner.method)}, the simplest method within noise of "
            f"the best ({paired(winner.method, top.method).sentence})"
        )
    floor = None
    if floors:
        floor = paired(winner.method, floors[0].method)
        # "no method" is said of the top score; `floor` (and its caution) is the winner's
        if not paired(top.method, floors[0].method).beats:
            sentence += (
                f"; no method clears {label(floor.baseline)} ({floors[0].detail}, "
                f"{floors[0].mean:.3f}) beyond noise"
            )
    versus_base = None
    if "base" in scores and winner.method != "base":
        versus_base = paired(winner.method, "base")

    warnings = []
    if n_items < min_items:
        warnings.append(
            f"{n_items} test items are too few to separate methods reliably (at least "
            f"{min_items} recommended); treat the intervals as rough"
        )
    single = [name for name in scores if len(scores[name]) == 1 and name not in DETERMINISTIC]
    if single:
        names = ", ".join(label(name) for name in single)
        warnings.append(
            f"one seed only for {names}: seed-to-seed spread is not measured, so the "
            "interval counts only the choice of test items"
        )
    return Verdict(
        methods=rows,
        winner=winner.method,
        comparison=comparison,
        sentence=sentence,
        n_items=n_items,
        confidence=confidence,
        resamples=resamples,
        warnings=warnings,
        references=floors,
        floor=floor,
        versus_base=versus_base,
        cautions=_cautions(versus_base, floor),
        winner_rule=winner_rule,
    )


def table(verdict: Verdict) -> str:
    """The verdict as aligned plain text: one row per method, then the sentence and warnings."""
    pct = _percent(verdict.confidence)
    header = ("method", "mean", f"{pct} interval", "seeds")
    cells = [
        (
            label(row.method) if not row.detail else f"reference: {row.detail}",
            f"{row.mean:.3f}",
            f"{row.low:.3f} to {row.high:.3f}",
            str(len(row.per_seed)) if not row.detail else "-",
        )
        for row in [*verdict.methods, *verdict.references]
    ]
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(4)]
    lines = []
    for row in [header, *cells]:
        lines.append(
            "  ".join(
                [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
            ).rstrip()
        )
    lines.append(f"({verdict.n_items} test items, {verdict.resamples} bootstrap resamples)")
    lines.append("")
    lines.append(verdict.sentence)
    lines += [f"warning: {w}" for w in verdict.warnings]
    lines += [f"caution: {c}" for c in verdict.cautions]
    return "\n".join(lines)
