"""Exact-match evaluation: generate greedily, extract the answer, compare with the gold one;
and, for records with `choices`, multiple choice by the log-likelihood of each option.

Expert scoring (EM on the K-shot), the testbed's baseline table and the final evaluation all
go through `evaluate_exact_match`, so the same prompt format and the same extractor decide
what counts as correct everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from taskexpert.errors import InputError
from taskexpert.lm import (
    IGNORE_INDEX,
    EncodedPair,
    batches_by_length,
    collate,
    ensure_pad_token,
    generate_greedy,
    token_nll,
)
from taskexpert.progress import progress as progress_bar
from taskexpert.prompts import (
    ANSWER_PREFIX,
    AnswerKind,
    extract_answer,
    format_prompt,
    infer_answer_kind,
    normalize_answer,
)
from taskexpert.records import Record


def gold_answer(record: Record, kind: AnswerKind) -> str:
    """The record's `answer`, else the answer stated at the end of its `output`."""
    if record.answer is not None and record.answer.strip():
        return normalize_answer(record.answer, kind)
    found = extract_answer(record.output, kind)
    if found is None:
        raise InputError(f"record {record.id!r} has no gold answer", field="answer")
    return found


def evaluate_exact_match(
    model,
    tokenizer,
    records: Sequence[Record],
    *,
    kind: AnswerKind | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 128,
    progress: bool = False,
) -> dict:
    """Exact match of greedy generations: {exact_match, n, correct, predictions}.

    `kind` picks the answer extractor for every record; None infers it per record from the
    gold answer (`prompts.infer_answer_kind`). Each prediction keeps the raw generation too.
    """
    if not records:
        raise InputError("no records to evaluate")
    kinds = [kind or infer_answer_kind(r) for r in records]
    golds = [gold_answer(r, k) for r, k in zip(records, kinds)]
    prompts = [format_prompt(r, tokenizer) for r in records]
    model.eval()
    generated: list[str] = []
    # Blocks of several batches keep the progress bar moving without hurting length grouping.
    block = batch_size * 4
    for start in progress_bar(
        range(0, len(prompts), block), desc="evaluate", unit="block", enabled=progress
    ):
        generated += generate_greedy(
            model,
            tokenizer,
            prompts[start : start + block],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
    predictions = []
    for record, k, gold, text in zip(records, kinds, golds, generated):
        predicted = extract_answer(text, k)
        predictions.append(
            {
                "id": record.id,
                "prediction": predicted,
                "gold": gold,
                "correct": predicted is not None and predicted == gold,
                "kind": k,
                "generated": text,
            }
        )
    correct = sum(p["correct"] for p in predictions)
    return {
        "exact_match": correct / len(predictions),
        "n": len(predictions),
        "correct": correct,
        "predictions": predictions,
    }


# --- multiple choice by log-likelihood of the options ------------------------------------------

_LETTERS = "ABCDEFGHIJ"
McStyle = Literal["answer", "text"]


def _is_lettered(record: Record) -> bool:
    """Options shown as letters in the prompt: the gold answer is a letter within range."""
    choices = record.choices or []
    if record.answer is None or len(record.answer.strip(" ().:")) != 1 or len(choices) > 10:
        return False
    return normalize_answer(record.answer, "letter") in _LETTERS[: len(choices)]


def choice_labels(record: Record) -> list[str]:
    """What names each option: its letter for lettered questions, else the option text."""
    choices = record.choices or []
    return list(_LETTERS[: len(choices)]) if _is_lettered(record) else list(choices)


def gold_choice(record: Record) -> int:
    """Index of the correct option, from a letter or from the option's text."""
    if not record.choices:
        raise InputError(f"record {record.id!r} has no choices", field="choices")
    blank = [i for i, c in enumerate(record.choices) if not c.strip()]
    if blank:
        raise InputError(f"record {record.id!r}: choice {blank[0]} is empty", field="choices")
    if record.answer is None or not record.answer.strip():
        raise InputError(f"record {record.id!r} has choices but no answer", field="answer")
    if _is_lettered(record):
        return _LETTERS.index(normalize_answer(record.answer, "letter"))
    wanted = normalize_answer(record.answer, "text")
    matches = [i for i, c in enumerate(record.choices) if normalize_answer(c, "text") == wanted]
    if not matches:
        raise InputError(
            f"record {record.id!r}: answer {record.answer!r} is neither an option letter nor "
            "one of the choices",
            field="answer",
        )
    return matches[0]


def option_continuations(record: Record, style: McStyle = "answer") -> list[str]:
    """The text scored after the prompt for each option.

    "answer": the way records end ("The answer is C."), so a model fine-tuned on records is
    scored on what it learned to say; "text": the bare option text (lm-evaluation-harness).
    """
    if style == "text":
        return list(record.choices or [])
    return [f"{ANSWER_PREFIX}{label}." for label in choice_labels(record)]


def _encode_option(tokenizer, prompt: str, option: str, max_length: int) -> EncodedPair:
    """Prompt (masked, cut from the left if too long) + option tokens; no EOS, unlike SFT."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    option_ids = tokenizer(option, add_special_tokens=False)["input_ids"][: max_length - 1]
    prompt_ids = prompt_ids[-(max_length - len(option_ids)) :]
    return EncodedPair(prompt_ids + option_ids, [IGNORE_INDEX] * len(prompt_ids) + option_ids)


@torch.no_grad()
def choice_logprobs(
    model,
    tokenizer,
    records: Sequence[Record],
    *,
    style: McStyle = "answer",
    batch_size: int = 32,
    max_length: int = 1024,
    progress: bool = False,
) -> list[list[tuple[float, int]]]:
    """Per record, per option: (summed log-prob of the option's tokens, their count).

    All (record, option) pairs are batched together by length; each is one forward pass.
    """

    pad_id = ensure_pad_token(tokenizer)
    pairs, owners = [], []
    for r, record in enumerate(records):
        prompt = format_prompt(record, tokenizer)
        for o, option in enumerate(option_continuations(record, style)):
            pairs.append(_encode_option(tokenizer, prompt, option, max_length))
            owners.append((r, o))
    scores: list[list[tuple[float, int]]] = [
        [(0.0, 0)] * len(record.choices or []) for record in records
    ]
    model.eval()
    batches = list(batches_by_length([len(p.input_ids) for p in pairs], batch_size))
    for idx in progress_bar(batches, desc="score options", unit="batch", enabled=progress):
        summed, counts = token_nll(model, collate([pairs[i] for i in idx], pad_id))
        for i, s, c in zip(idx, summed.tolist(), counts.tolist(), strict=True):
            r, o = owners[i]
            scores[r][o] = (-s, int(c))
    return scores


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def evaluate_multiple_choice(
    model,
    tokenizer,
    records: Sequence[Record],
    *,
    style: McStyle = "answer",
    batch_size: int = 32,
    max_length: int = 1024,
    progress: bool = False,
) -> dict:
    """Accuracy of picking the most likely option, by summed and by per-token mean log-prob.

    Only records with `choices` count; {multiple_choice_accuracy, multiple_choice_accuracy_norm,
    n_multiple_choice, predictions}. The mean ("norm") variant does not favour short options.
    """
    mc = [r for r in records if r.choices]
    if not mc:
        raise InputError("no records with choices to score")
    golds = [gold_choice(r) for r in mc]
    scores = choice_logprobs(
        model,
        tokenizer,
        mc,
        style=style,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
    )
    predictions = []
    for record, gold, options in zip(mc, golds, scores):
        sums = [s for s, _ in options]
        means = [s / max(n, 1) for s, n in options]
        labels = choice_labels(record)
        best, best_norm = _argmax(sums), _argmax(means)
        predictions.append(
            {
                "id": record.id,
                "mc_prediction": labels[best],
                "mc_prediction_norm": labels[best_norm],
                "mc_gold": labels[gold],
                "mc_correct": best == gold,
                "mc_correct_norm": best_norm == gold,
                "option_logprobs": [round(v, 6) for v in sums],
                "option_mean_logprobs": [round(v, 6) for v in means],
            }
        )
    n = len(predictions)
    return {
        "multiple_choice_accuracy": sum(p["mc_correct"] for p in predictions) / n,
        "multiple_choice_accuracy_norm": sum(p["mc_correct_norm"] for p in predictions) / n,
        "n_multiple_choice": n,
        "multiple_choice_style": style,
        "predictions": predictions,
    }


def evaluate_model(
    model,
    tokenizer,
    records: Sequence[Record],
    *,
    kind: AnswerKind | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 128,
    multiple_choice: bool = True,
    mc_style: McStyle = "answer",
    max_length: int = 1024,
    progress: bool = False,
) -> dict:
    """eval.json content: exact match on every record, plus option log-likelihood scoring on
    the records with `choices` (merged into the same per-record predictions)."""
    result = evaluate_exact_match(
        model,
        tokenizer,
        records,
        kind=kind,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        progress=progress,
    )
    if multiple_choice and any(r.choices for r in records):
        mc = evaluate_multiple_choice(
            model,
            tokenizer,
            records,
            style=mc_style,
            batch_size=batch_size,
            max_length=max_length,
            progress=progress,
        )
        by_id = {p["id"]: p for p in mc.pop("predictions")}
        for prediction in result["predictions"]:
            extra = by_id.get(prediction["id"])
            if extra is not None:
                prediction.update({k: v for k, v in extra.items() if k != "id"})
        predictions = result.pop("predictions")
        result.update(mc)
        result["predictions"] = predictions
    return result


def default_max_new_tokens(tokenizer, records: Sequence[Record], cap: int = 512) -> int:
    """Room to generate: 1.5x the longest gold output in tokens, plus 8, at most `cap`."""
    longest = max(len(tokenizer(r.output, add_special_tokens=False)["input_ids"]) for r in records)
    return min(cap, int(1.5 * longest) + 8)
