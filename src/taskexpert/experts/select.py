"""Stage 1 as one call: score the bank on the K-shot, compare adapters, choose the group.

`select_experts` composes scoring, diversity and grouping and owns none of their maths; its
result serialises to experts.json, which says for every adapter how it scored and why it is
in or out, so the choice can be audited or redone with other knobs without rescoring.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from taskexpert.artifacts import ExpertsDocument
from taskexpert.bank import Bank
from taskexpert.errors import InputError
from taskexpert.experts.config import ExpertSelectionConfig
from taskexpert.experts.diversity import SimilarityMatrix, similarity_matrix
from taskexpert.experts.family import kshot_rationale_match
from taskexpert.experts.grouping import GroupChoice, choose_group
from taskexpert.experts.scoring import (
    BASE_ROW,
    RPPL_VARIANTS,
    AdapterScore,
    check_kshot,
    json_number,
    prepare_kshot,
    reasoning_score,
    score_bank,
)
from taskexpert.records import Record, load_records
from taskexpert.tensor_sample import spaced_indices

__all__ = ["ExpertSelection", "ExpertSelectionConfig", "select_experts"]


@dataclass
class ExpertSelection:
    """Stage 1's result: the group, every score and verdict, the similarity matrix, warnings."""

    chosen: list[str]
    reason: str
    scores: dict[str, AdapterScore]
    group: GroupChoice
    similarity: SimilarityMatrix
    rejected: dict[str, str]
    warnings: list[str]
    config: ExpertSelectionConfig
    kshot_size: int = 0
    kshot_with_rationale: int = 0

    def to_json(self, inputs: dict[str, str] | None = None) -> dict:
        """experts.json's document (artifacts.ExpertsDocument); `inputs` says where the base,
        bank and K-shot were, so train-moe finds the bank."""
        return self.document(inputs).dump()

    def document(self, inputs: dict[str, str] | None = None) -> ExpertsDocument:
        scores = {}
        for name, score in self.scores.items():
            row = score.to_json()
            if name == BASE_ROW:
                row["decision"] = "reference: the base model without an adapter"
            else:
                row["quality"] = round(self.group.quality.get(name, 0.0), 6)
                row["decision"] = self.group.decisions[name]
            scores[name] = row
        group = self.group
        return ExpertsDocument.model_validate(
            {
                "chosen": list(self.chosen),
                "reason": self.reason,
                "scores": scores,
                "rejected": dict(self.rejected),
                "similarity": self.similarity.to_json(),
                "group": {
                    "search": group.search,
                    "mean_quality": round(group.group_quality, 6),
                    "mean_similarity": None
                    if group.group_similarity is None
                    else round(group.group_similarity, 6),
                    "routed_rppl": None
                    if group.routed_rppl is None
                    else json_number(group.routed_rppl),
                },
                "kshot": {"size": self.kshot_size, "with_rationale": self.kshot_with_rationale},
                "warnings": list(self.warnings),
                "config": self.config.model_dump(),
                "inputs": inputs,
            }
        )

    def table(self) -> str:
        """A fixed-width table for the terminal: one row per model, chosen ones starred."""
        width = max(len(name) for name in self.scores) + 2
        lines = [f"{'adapter':<{width}} {'EM':>6} {'RPPL':>10} {'PPL':>10} {'sec':>6}  verdict"]
        for name, score in self.scores.items():
            mark = "*" if name in self.chosen else " "
            verdict = "reference" if name == BASE_ROW else self.group.decisions[name]
            lines.append(
                f"{mark}{name:<{width - 1}} {score.em:>6.3f} {_num(score.rppl):>10} "
                f"{_num(score.ppl):>10} {score.seconds:>6.2f}  {verdict}"
            )
        for name, why in self.rejected.items():
            lines.append(
                f" {name:<{width - 1}} {'-':>6} {'-':>10} {'-':>10} {'-':>6}  rejected: {why}"
            )
        return "\n".join(lines)


def _num(value: float) -> str:
    return f"{value:.4g}" if value == value and value != float("inf") else "inf"


def cap_kshot(kshot: Sequence[Record], cap: int | None) -> tuple[list[Record], list[str]]:
    """At most `cap` evenly spaced items (first and last kept: no seed, the same subset on
    every run), and the warning that says so; all of them when `cap` is None or not smaller."""
    if cap is None or len(kshot) <= cap:
        return list(kshot), []
    chosen = [kshot[i] for i in spaced_indices(len(kshot), cap).tolist()]
    return chosen, [f"scored on {cap} of the K-shot's {len(kshot)} items (max_kshot)"]


def _score(
    base_model,
    tokenizer,
    bank: Bank,
    task,
    config: ExpertSelectionConfig,
    scorer: Callable[..., dict[str, AdapterScore]] | None,
    score_dir: str | Path | None,
) -> dict[str, AdapterScore]:
    """score_bank (or `scorer`), skipping what `score_dir` already holds and adding to it."""
    scorer = scorer or score_bank
    if score_dir is None:
        return scorer(base_model, tokenizer, bank, task, config.scoring(), progress=config.progress)
    from taskexpert.experts.score_store import ScoreStore

    store = ScoreStore(score_dir, base_model, tokenizer, task, config.scoring())
    done = store.done(bank.adapters)
    todo = {name: adapter for name, adapter in bank.adapters.items() if name not in done}
    fresh: dict[str, AdapterScore] = {}
    if todo or BASE_ROW not in done:
        fresh = scorer(
            base_model,
            tokenizer,
            todo,
            task,
            config.scoring(),
            include_base=BASE_ROW not in done,
            progress=config.progress,
            on_score=lambda name, score: store.put(name, bank.adapters.get(name), score),
        )
    scores = done | fresh
    return {name: scores[name] for name in [BASE_ROW, *bank.adapters]}


def select_experts(
    base_model,
    tokenizer,
    bank: Bank,
    kshot: Sequence[Record] | str | Path,
    config: ExpertSelectionConfig | None = None,
    source: str | Path | None = None,
    scorer: Callable[..., dict[str, AdapterScore]] | None = None,
    score_dir: str | Path | None = None,
) -> ExpertSelection:
    """Score every usable adapter (and the base model) on the K-shot and choose N experts.

    `kshot` is a list of records or a records file; `source` names the file in errors when
    the records were loaded elsewhere. `scorer` replaces `score_bank` (same call), e.g. with
    `distributed.RayBankScorer` to score a large bank on Ray workers. With `score_dir`, each
    model's scores are kept there as soon as they exist and scores already there (from an
    interrupted run with the same inputs) are reused; the scorer then also gets `on_score`.
    """
    config = config or ExpertSelectionConfig()
    if isinstance(kshot, str | Path):
        source = Path(kshot)
        kshot = load_records(source)
    if config.n > len(bank):
        rejected = f"; rejected: {', '.join(bank.rejected)}" if bank.rejected else ""
        raise InputError(
            f"N={config.n} experts requested but the bank has only {len(bank)} usable "
            f"adapter(s){rejected}"
        )
    grouping = config.grouping()
    grouping.candidates()  # raises on n > m before any expensive work
    check_kshot(kshot, source, contrast=config.needs_contrast)
    kshot, capped = cap_kshot(kshot, config.max_kshot)
    task = prepare_kshot(kshot, tokenizer, config.scoring(), source)
    task.warnings[:0] = capped
    similarity = similarity_matrix(bank.adapters, config.similarity, progress=config.progress)
    scores = _score(base_model, tokenizer, bank, task, config, scorer, score_dir)
    adapters = [name for name in scores if name != BASE_ROW]
    base = scores[BASE_ROW]
    shown = RPPL_VARIANTS[1:] if config.report_variants else ()
    shown += (config.rppl_variant,) if config.rppl_variant not in ("paper", *shown) else ()
    for score in scores.values():
        score.variants = {v: reasoning_score(score, v, base) for v in shown}
    if config.perplexity == "ppl":
        perplexity = {n: scores[n].ppl for n in [*adapters, BASE_ROW]}
    else:
        perplexity = {
            n: reasoning_score(scores[n], config.rppl_variant, base) for n in [*adapters, BASE_ROW]
        }
    base_perplexity = perplexity.pop(BASE_ROW)
    contrast = None
    if config.drop_ungrounded:
        contrast = {n: reasoning_score(scores[n], "contrast") for n in [*adapters, BASE_ROW]}
    group = choose_group(
        {n: scores[n].em for n in adapters},
        perplexity,
        similarity,
        grouping,
        base_em=base.em,
        token_nll={n: scores[n].rationale_token_nll for n in adapters},
        base_perplexity=base_perplexity,
        contrast=contrast,
        base_contrast=None if contrast is None else contrast.pop(BASE_ROW),
        generations={n: scores[n].generations for n in adapters},
        rationale_match=kshot_rationale_match(scores, adapters, task),
    )
    warnings = list(task.warnings)
    warnings += [f"adapter {n!r}: {w}" for n, ws in bank.warnings.items() for w in ws]
    warnings += [f"adapter {n!r} skipped: {why}" for n, why in bank.rejected.items()]
    warnings += group.warnings
    return ExpertSelection(
        chosen=group.chosen,
        reason=group.reason,
        scores=scores,
        group=group,
        similarity=similarity,
        rejected=dict(bank.rejected),
        warnings=warnings,
        config=config,
        kshot_size=len(task),
        kshot_with_rationale=sum(task.has_rationale),
    )
