"""Score adapters on the K-shot: exact match, reasoning perplexity, vanilla perplexity.

Paper A's "abidance by K-shot": a good expert answers the K-shot correctly (EM) *and* finds
the worked rationale likely (low reasoning perplexity, RPPL); a blind guesser hits the option
without being able to justify it. One base model stays in memory; each adapter is injected
from its in-memory factors (the bank read them once), scored in batches, and removed again.
By default `adapters_per_batch` adapters share each batch (experts/multi_lora.py, rows of a
batch belong to different adapters) and one prompt pass per batch serves generation and both
NLL targets (lm.generate_and_score); adapters_per_batch=1, share_prompt=False is the
one-adapter-at-a-time PEFT path, kept as the reference.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from taskexpert.bank import Bank, LoraAdapter
from taskexpert.errors import InputError
from taskexpert.experts.multi_lora import MultiLoraSwitcher, supports
from taskexpert.lm import (
    ensure_pad_token,
    generate_and_score,
    generate_greedy,
    per_example_means,
    target_token_nlls,
)
from taskexpert.peft_glue import AdapterSwitcher
from taskexpert.progress import progress as progress_bar
from taskexpert.prompts import (
    AnswerKind,
    format_prompt,
    infer_answer_kind,
    is_correct,
    reasoning_target,
)
from taskexpert.records import Record

BASE_ROW = "(base model)"
MAX_NLL = 700.0  # exp() of more overflows a float; such an example is hopeless anyway
RPPL_VARIANTS = ("paper", "relative", "contrast", "content")
PASS_VARIANTS = ("contrast", "content")  # the variants that need extra per-K-shot work


@dataclass
class ScoringConfig:
    """How the K-shot is scored; the defaults suit any causal LM."""

    batch_size: int = 16  # K-shot examples per generation batch (per adapter); NLL batch rows
    # Adapters scored together in shared batches (experts/multi_lora.py); 1: one at a time
    # through PEFT, the reference path. The base row rides in the first group.
    adapters_per_batch: int = 16
    # The KV cache of a shared batch grows with rows x (prompt + target + generation) tokens:
    # groups shrink until one batch's cache fits this budget (kv_cache_bytes_per_row); 17
    # SmolLM2 models x 16 ARC items held about 4 GB, a 7B model's would be over 30 GB.
    kv_cache_budget_bytes: int = 2 << 30
    # One prompt pass per batch whose KV cache serves both NLL targets and generation's
    # prefill (lm.generate_and_score); False: separate passes, the reference path.
    share_prompt: bool = True
    max_new_tokens: int | None = None  # None: 1.5x the longest K-shot reasoning target + 8
    max_new_tokens_cap: int = 512
    max_length: int = 1024
    use_chat_template: bool | None = None  # None: use the tokenizer's chat template if it has one
    # RPPL variants beyond the paper (see reasoning_score): "contrast" costs one more forward
    # pass over the K-shot (mismatched rationales); "content" only a template mask, computed
    # once, over the per-token NLLs the main pass already has.
    variants: tuple[str, ...] = ()
    template_min_block: int = 2  # tokens a shared run needs to count as template ("content")


@dataclass
class KShotTask:
    """The K-shot turned into prompts and targets once, shared by every adapter's scoring."""

    ids: list[str]
    prompts: list[str]
    reasoning_targets: list[str]
    answer_targets: list[str]
    gold: list[str]
    kinds: list[AnswerKind]
    has_rationale: list[bool]
    max_new_tokens: int
    warnings: list[str] = field(default_factory=list)
    mismatch_targets: list[str] | None = None  # another item's rationale, this item's answer
    content_masks: list[list[bool]] | None = None  # per target token: not shared template
    longest_pair: int = 0  # tokens of the longest prompt + target + EOS (truncation check)

    def __len__(self) -> int:
        return len(self.ids)


def check_kshot(
    records: Sequence[Record], source: str | Path | None = None, contrast: bool = False
) -> None:
    """Fail before any model loads: a K-shot needs records, each with a gold answer, and
    (`contrast`: the contrast score decides) rationales to swap between items."""
    if not records:
        raise InputError("the K-shot set is empty", source)
    for number, record in enumerate(records, start=1):
        if record.answer is None or not str(record.answer).strip():
            raise InputError(
                f"record {record.id!r} has no gold answer; exact match needs one",
                source,
                number if source else None,
                "answer",
            )
    rationales = {r.rationale.strip() for r in records if r.rationale and r.rationale.strip()}
    if contrast and len(rationales) < 2:
        raise InputError(
            "the contrast score (--rppl-variant contrast, --drop-ungrounded) needs rationales, "
            f"at least two different ones; this K-shot has {len(rationales)}",
            source,
            field="rationale",
        )


def prepare_kshot(
    records: Sequence[Record],
    tokenizer,
    config: ScoringConfig | None = None,
    source: str | Path | None = None,
) -> KShotTask:
    """Prompts, rationale+answer targets and bare-answer targets; no rationale -> vanilla PPL."""
    config = config or ScoringConfig()
    check_kshot(records, source)
    prompts, reasoning, answers, gold, kinds, has_rationale = [], [], [], [], [], []
    for record in records:
        answer = str(record.answer).strip()
        prompts.append(format_prompt(record, tokenizer, config.use_chat_template))
        answers.append(answer)
        gold.append(answer)
        kinds.append(infer_answer_kind(record))
        with_rationale = bool(record.rationale and record.rationale.strip())
        has_rationale.append(with_rationale)
        # Without a rationale the "reasoning" target would be the output, which may or may not
        # reason; docs/design.md asks for the bare answer instead, so RPPL degrades to vanilla PPL.
        reasoning.append(reasoning_target(record) if with_rationale else answer)
    warnings = []
    missing = [r.id for r, ok in zip(records, has_rationale) if not ok]
    if len(missing) == len(records):
        warnings.append(
            "the K-shot has no rationales: reasoning perplexity falls back to vanilla "
            "perplexity (bare answers), so it cannot tell reasoning from guessing"
        )
    elif missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        warnings.append(
            f"{len(missing)} of {len(records)} K-shot records have no rationale ({shown}); "
            "their reasoning perplexity uses the bare answer"
        )
    max_new_tokens = config.max_new_tokens
    if max_new_tokens is None:
        longest = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in reasoning)
        max_new_tokens = min(config.max_new_tokens_cap, int(1.5 * longest) + 8)
    ids = [r.id for r in records]
    task = KShotTask(
        ids, prompts, reasoning, answers, gold, kinds, has_rationale, max_new_tokens, warnings
    )
    unknown = set(config.variants) - set(PASS_VARIANTS)
    if unknown:
        raise ValueError(f"unknown scoring variant(s) {sorted(unknown)}; known: {PASS_VARIANTS}")
    if "contrast" in config.variants:
        task.mismatch_targets = mismatched_targets(records, reasoning)
    if "content" in config.variants:
        task.content_masks = content_masks(tokenizer, reasoning, config.template_min_block)
    task.longest_pair = longest_pair(
        tokenizer, prompts, [reasoning, answers, task.mismatch_targets]
    )
    return task


def longest_pair(tokenizer, prompts: Sequence[str], target_sets) -> int:
    """Tokens of the longest prompt + target + EOS over the target sets (None: skipped)."""

    def count(text: str, special: bool) -> int:
        return len(tokenizer(text, add_special_tokens=special)["input_ids"])

    prompt_lengths = [count(p, True) for p in prompts]
    return max(
        length + count(target, False) + 1
        for targets in target_sets
        if targets is not None
        for length, target in zip(prompt_lengths, targets, strict=True)
    )


def mismatched_targets(records: Sequence[Record], targets: Sequence[str]) -> list[str]:
    """For item i, the next item's (different) rationale followed by item i's own answer.

    A model that reasons conditions the rationale on the question and finds another
    question's rationale unlikely; a model that only learned the rationale *format* does not
    care. Keeping the true answer isolates the rationale's content.
    """
    result, n = [], len(records)
    for i, record in enumerate(records):
        own = (record.rationale or "").strip()
        others = (records[(i + step) % n] for step in range(1, n))
        other = next((o for o in others if (o.rationale or "").strip() not in ("", own)), None)
        if not own or other is None:
            result.append(targets[i])  # nothing to contrast with: a gap of 0 for every model
        else:
            result.append(reasoning_target(other.model_copy(update={"answer": record.answer})))
    return result


def content_masks(tokenizer, targets: Sequence[str], min_block: int = 2) -> list[list[bool]]:
    """Per target token (EOS included): True unless it sits in a run shared with most others.

    Template text ("The letters are", "The answer is") recurs across K-shot rationales in
    runs of several tokens; what is left (the digits, letters, options that depend on the
    question) is the content a format-mimic cannot predict. Model-independent: computed once.
    """
    from difflib import SequenceMatcher

    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in targets]
    masks = []
    for i, ids in enumerate(encoded):
        shared = [0] * len(ids)
        others = [e for j, e in enumerate(encoded) if j != i]
        for other in others:
            covered = [False] * len(ids)
            matcher = SequenceMatcher(None, ids, other, autojunk=False)
            for block in matcher.get_matching_blocks():
                if block.size >= min_block:
                    covered[block.a : block.a + block.size] = [True] * block.size
            shared = [s + c for s, c in zip(shared, covered)]
        majority = max(1, len(others) // 2) if others else 1
        mask = [count < majority for count in shared] if others else [True] * len(ids)
        masks.append(mask + [False])  # EOS is format, not content
    return masks


@dataclass
class AdapterScore:
    """One model's K-shot scores, with the per-example numbers kept for ablations."""

    name: str
    em: float
    rppl: float
    ppl: float
    seconds: float
    correct: list[bool]
    rationale_nll: list[float]
    answer_nll: list[float]
    generations: list[str]
    mismatch_nll: list[float] | None = None
    content_nll: list[float | None] | None = None
    rationale_token_nll: list[list[float]] | None = None  # for the coverage objective
    variants: dict[str, float] = field(default_factory=dict)  # filled by select, see below

    def to_json(self) -> dict:
        row = {
            "em": round(self.em, 6),
            "rppl": json_number(self.rppl),
            "ppl": json_number(self.ppl),
            "seconds": round(self.seconds, 3),
        }
        row.update({f"rppl_{k}": json_number(v) for k, v in self.variants.items()})
        return row


def json_number(value: float) -> float | str:
    """JSON has no inf; say so in words rather than writing an invalid file."""
    return round(value, 6) if math.isfinite(value) else "inf"


def perplexity(nlls: Sequence[float]) -> float:
    """Mean over examples of exp(mean token NLL): the paper's per-example perplexity, averaged."""
    return sum(math.exp(min(x, MAX_NLL)) for x in nlls) / len(nlls) if nlls else math.nan


@torch.no_grad()
def score_model(
    model, tokenizer, task: KShotTask, config: ScoringConfig | None = None, name: str = ""
) -> AdapterScore:
    """EM from batched greedy generation, RPPL and PPL from one batched masked-NLL pass."""
    return score_models(model, tokenizer, task, config, [name])[0]


@torch.no_grad()
def score_models(
    model,
    tokenizer,
    task: KShotTask,
    config: ScoringConfig | None = None,
    names: Sequence[str] = ("",),
    select_rows: Callable | None = None,
) -> list[AdapterScore]:
    """score_model for len(names) models at once: `model` answers batches of adapter-major
    row blocks, block g for names[g] (multi_lora's layout; one name: any plain model);
    `select_rows` lets decoding drop finished rows from such a batch (MultiLoraSwitcher's).

    Batches hold `batch_size` K-shot examples per model; with `share_prompt` one prompt pass
    per batch serves both NLL targets and generation. Without it (or when an example needs
    truncating), separate passes; their NLL batches hold `batch_size` rows in all (the logits
    of every position are what limits their size)."""
    config = config or ScoringConfig()
    start = time.perf_counter()
    copies, n = len(names), len(task)
    if config.share_prompt and task.longest_pair <= config.max_length:
        target_sets = [task.reasoning_targets, task.answer_targets]
        if task.mismatch_targets is not None:
            target_sets.append(task.mismatch_targets)
        generations, nll_sets = generate_and_score(
            model,
            tokenizer,
            task.prompts,
            target_sets,
            max_new_tokens=task.max_new_tokens,
            batch_size=config.batch_size,
            copies=copies,
            select_rows=select_rows,
        )
        per_token = [
            row for g in range(copies) for part in nll_sets[:2] for row in part[g * n : (g + 1) * n]
        ]
        mismatch = nll_sets[2] if task.mismatch_targets is not None else None
    else:
        generations, per_token, mismatch = separate_passes(model, tokenizer, task, config, copies)
    seconds = (time.perf_counter() - start) / copies
    scores = []
    for g, name in enumerate(names):
        texts = generations[g * n : (g + 1) * n]
        tokens = per_token[2 * n * g : 2 * n * (g + 1)]
        correct = [
            is_correct(text, gold, kind)
            for text, gold, kind in zip(texts, task.gold, task.kinds, strict=True)
        ]
        nlls = per_example_means(tokens)
        rationale_nll, answer_nll = nlls[:n], nlls[n:]
        scores.append(
            AdapterScore(
                name=name,
                em=sum(correct) / len(correct),
                rppl=perplexity(rationale_nll),
                ppl=perplexity(answer_nll),
                seconds=seconds,
                correct=correct,
                rationale_nll=rationale_nll,
                answer_nll=answer_nll,
                generations=texts,
                mismatch_nll=None
                if mismatch is None
                else per_example_means(mismatch[g * n : (g + 1) * n]),
                content_nll=None
                if task.content_masks is None
                else content_mean_nll(tokens[:n], task.content_masks),
                rationale_token_nll=tokens[:n],
            )
        )
    return scores


def separate_passes(model, tokenizer, task: KShotTask, config: ScoringConfig, copies: int):
    """Generation, then the NLL targets, each pass encoding the prompts again (the reference
    path, and the one that truncates over-long examples): (texts, per_token, mismatch)."""
    generations = generate_greedy(
        model,
        tokenizer,
        task.prompts,
        max_new_tokens=task.max_new_tokens,
        batch_size=config.batch_size,
        max_prompt_length=config.max_length,
        copies=copies,
    )
    nll_batch = max(1, config.batch_size // copies)
    # Both targets in one call: batches_by_length packs them with the least padding.
    per_token = target_token_nlls(
        model,
        tokenizer,
        task.prompts + task.prompts,
        task.reasoning_targets + task.answer_targets,
        batch_size=nll_batch,
        max_length=config.max_length,
        copies=copies,
    )
    mismatch = None
    if task.mismatch_targets is not None:
        mismatch = target_token_nlls(
            model,
            tokenizer,
            task.prompts,
            task.mismatch_targets,
            batch_size=nll_batch,
            max_length=config.max_length,
            copies=copies,
        )
    return generations, per_token, mismatch


def content_mean_nll(
    token_nll: Sequence[Sequence[float]], masks: Sequence[Sequence[bool]]
) -> list[float | None]:
    """Mean NLL of each reasoning target over its content tokens only (None: no content),
    from the per-token NLLs the main pass already has: no second forward pass."""
    result: list[float | None] = []
    for losses, mask in zip(token_nll, masks, strict=True):
        kept = [x for x, keep in zip(losses, mask) if keep]
        result.append(sum(kept) / len(kept) if kept else None)
    return result


def reasoning_score(
    score: AdapterScore, variant: str = "paper", base: AdapterScore | None = None
) -> float:
    """The reasoning-perplexity family; lower is better for every variant.

    paper:    mean_i exp(NLL of rationale+answer) (Paper A; the default)
    relative: mean_i exp(NLL_model - NLL_base): what the adapter adds over the base model
    contrast: mean_i exp(NLL(own rationale) - NLL(another item's rationale)): ~1 when the
              model ignores the question (format only), << 1 when it reasons about it
    content:  mean_i exp(NLL over content tokens only), template runs masked
    """
    if variant == "paper":
        return score.rppl
    if variant == "relative":
        if base is None:
            raise ValueError("the relative variant needs the base model's scores")
        return perplexity([a - b for a, b in zip(score.rationale_nll, base.rationale_nll)])
    if variant == "contrast":
        if score.mismatch_nll is None:
            raise ValueError("score the K-shot with variants=('contrast',) first")
        return perplexity([a - b for a, b in zip(score.rationale_nll, score.mismatch_nll)])
    if variant == "content":
        if score.content_nll is None:
            raise ValueError("score the K-shot with variants=('content',) first")
        values = [x for x in score.content_nll if x is not None]
        return perplexity(values) if values else score.rppl
    raise ValueError(f"unknown reasoning-perplexity variant {variant!r}; known: {RPPL_VARIANTS}")


OnScore = Callable[[str, "AdapterScore"], None]


def score_bank(
    base_model,
    tokenizer,
    adapters: Bank | Mapping[str, LoraAdapter],
    task: KShotTask,
    config: ScoringConfig | None = None,
    include_base: bool = True,
    progress: bool = True,
    on_score: OnScore | None = None,
) -> dict[str, AdapterScore]:
    """Scores for the base model (reference row, first) and every adapter, in bank order.

    `on_score(name, score)` is called as each model is scored (e.g. to persist it, so that a
    killed run resumes: see score_store.py).
    """
    config = config or ScoringConfig()
    ensure_pad_token(tokenizer)
    adapters = adapters.adapters if isinstance(adapters, Bank) else adapters
    if BASE_ROW in adapters:
        raise InputError(f"an adapter may not be called {BASE_ROW!r}; that row is the base model")
    scores: dict[str, AdapterScore] = {}

    def record(group_scores: Sequence[AdapterScore]) -> None:
        for score in group_scores:
            scores[score.name] = score
            if on_score is not None:
                on_score(score.name, score)

    if config.adapters_per_batch <= 1:
        if include_base:
            record([score_model(base_model, tokenizer, task, config, BASE_ROW)])
        with AdapterSwitcher(base_model) as switcher:
            for name, adapter in progress_bar(
                adapters.items(), desc="scoring adapters", unit="adapter", enabled=progress
            ):
                start = time.perf_counter()
                model = switcher.activate(adapter)
                score = score_model(model, tokenizer, task, config, name)
                score.seconds = time.perf_counter() - start  # switching is part of the cost
                record([score])
        return scores
    models: list[tuple[str, LoraAdapter | None]] = [(BASE_ROW, None)] if include_base else []
    models += list(adapters.items())
    size = adapters_per_group(base_model, task, config)
    # the bar moves as each group's scores exist, not as adapters are queued for one
    bar = progress_bar(
        total=len(adapters), desc="scoring adapters", unit="adapter", enabled=progress
    )
    with bar:
        for start in range(0, len(models), size):
            group = models[start : start + size]
            record(score_group(base_model, tokenizer, group, task, config))
            bar.update(sum(adapter is not None for _, adapter in group))
    return scores


def kv_cache_bytes_per_row(model, tokens: int) -> int | None:
    """Bytes of keys and values one batch row holds at `tokens` tokens (None: the model's
    config does not say: no layer count or head sizes)."""
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    if not (layers and heads and hidden):
        return None
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    dtype = next(model.parameters()).dtype
    return 2 * layers * kv_heads * head_dim * tokens * dtype.itemsize


def adapters_per_group(model, task: KShotTask, config: ScoringConfig) -> int:
    """`adapters_per_batch`, lowered (to 1 at least) until one shared batch's KV cache fits
    `kv_cache_budget_bytes`: batch_size rows per adapter, each as long as the longest prompt
    and target plus the generation."""
    per_row = kv_cache_bytes_per_row(model, task.longest_pair + task.max_new_tokens)
    rows = min(config.batch_size, max(len(task), 1))
    if per_row is None:
        return config.adapters_per_batch
    fits = config.kv_cache_budget_bytes // (per_row * rows)
    return max(1, min(config.adapters_per_batch, fits))


def score_group(
    base_model,
    tokenizer,
    group: Sequence[tuple[str, LoraAdapter | None]],
    task: KShotTask,
    config: ScoringConfig,
) -> list[AdapterScore]:
    """Several adapters (None: the base model) scored in shared batches (multi_lora); one at
    a time through PEFT where a layer they touch is not a plain linear one."""
    start = time.perf_counter()
    adapters = [adapter for _, adapter in group if adapter is not None]
    if not supports(base_model, adapters):
        single = replace(config, adapters_per_batch=1)
        scores = []
        for name, adapter in group:
            if adapter is None:
                scores.append(score_model(base_model, tokenizer, task, single, name))
            else:
                part = score_bank(
                    base_model, tokenizer, {name: adapter}, task, single, False, False
                )
                scores.append(part[name])
        return scores
    with MultiLoraSwitcher(base_model) as switcher:
        model = switcher.activate([adapter for _, adapter in group])
        names = [name for name, _ in group]
        scores = score_models(model, tokenizer, task, config, names, switcher.select_rows)
    seconds = (time.perf_counter() - start) / len(group)  # switching is part of the cost
    for score in scores:
        score.seconds = seconds
    return scores
