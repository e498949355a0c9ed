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
    MAX_PROMPT_LENGTH,
    EncodedPair,
    batches_by_length,
    collate,
    ensure_pad_token,
    generate_and_score,
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
    for start in _blocks(len(prompts), batch_size, progress):
        generated += generate_greedy(
            model,
            tokenizer,
            prompts[start : start + batch_size * _BLOCK],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
    return _exact_match_result(records, kinds, golds, generated)


_BLOCK = 4  # batches per progress step


def _blocks(n: int, batch_size: int, progress: bool):
    """Start of each block of _BLOCK batches, behind the progress bar."""
    starts = range(0, n, batch_size * _BLOCK)
    return progress_bar(starts, desc="evaluate", unit="block", enabled=progress)


def _exact_match_result(
    records: Sequence[Record],
    kinds: Sequence[AnswerKind],
    golds: Sequence[str],
    generated: Sequence[str],
) -> dict:
    predictions = []
    for record, k, gold, text in zip(records, kinds, golds, generated, strict=True):
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

OPTION_LETTERS = "ABCDEFGHIJ"
McStyle = Literal["answer", "text"]


def _is_lettered(record: Record) -> bool:
    """Options shown as letters in the prompt: the gold answer is a letter within range."""
    choices = record.choices or []
    if record.answer is None or len(record.answer.strip(" ().:")) != 1 or len(choices) > 10:
        return False
    return normalize_answer(record.answer, "letter") in OPTION_LETTERS[: len(choices)]


def choice_labels(record: Record) -> list[str]:
    """What names each option: its letter for lettered questions, else the option text."""
    choices = record.choices or []
    return list(OPTION_LETTERS[: len(choices)]) if _is_lettered(record) else list(choices)


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
        return OPTION_LETTERS.index(normalize_answer(record.answer, "letter"))
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
    return _choice_result(mc, golds, scores, style)


def _choice_result(
    mc: Sequence[Record],
    golds: Sequence[int],
    scores: Sequence[Sequence[tuple[float, int]]],
    style: McStyle,
) -> dict:
    predictions = []
    for record, gold, options in zip(mc, golds, scores, strict=True):
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


def _generate_and_score_options(
    model,
    tokenizer,
    prompts: Sequence[str],
    options: Sequence[Sequence[str]],
    *,
    batch_size: int,
    max_new_tokens: int,
    progress: bool,
) -> tuple[list[str], list[list[tuple[float, int]]]]:
    """Each prompt's greedy generation and its options' (summed log-prob, token count) from one
    prompt pass per batch (lm.generate_and_score): the prompt, most of an example's tokens, is
    computed once instead of once per option plus once to generate. Option j of every record
    is target set j; records with fewer options score an empty target there, which is free."""
    width = max(len(o) for o in options)
    target_sets = [[o[j] if j < len(o) else "" for o in options] for j in range(width)]
    texts: list[str] = []
    nlls: list[list[list[float]]] = [[] for _ in range(width)]
    for start in _blocks(len(prompts), batch_size, progress):
        end = start + batch_size * _BLOCK
        got_texts, got_sets = generate_and_score(
            model,
            tokenizer,
            prompts[start:end],
            [targets[start:end] for targets in target_sets],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            append_eos=False,
        )
        texts += got_texts
        for j, got in enumerate(got_sets):
            nlls[j] += got
    scores = [
        [(-sum(nlls[j][i]), len(nlls[j][i])) for j in range(len(o))] for i, o in enumerate(options)
    ]
    return texts, scores


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
    the records with `choices` (merged into the same per-record predictions).

    With choices, generation and option scoring share each batch's prompt pass (the same
    texts as generate_greedy, the same scores as choice_logprobs within float noise); records
    whose prompt would be cut (over `max_length` with an option, over MAX_PROMPT_LENGTH
    tokens) take the separate passes, which cut them as before.
    """
    if not (multiple_choice and any(r.choices for r in records)):
        return evaluate_exact_match(
            model,
            tokenizer,
            records,
            kind=kind,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            progress=progress,
        )
    kinds = [kind or infer_answer_kind(r) for r in records]
    golds = [gold_answer(r, k) for r, k in zip(records, kinds)]
    mc_golds = {r.id: gold_choice(r) for r in records if r.choices}
    prompts = [format_prompt(r, tokenizer) for r in records]
    options = [option_continuations(r, mc_style) if r.choices else [] for r in records]
    model.eval()
    shared = [
        i for i, (p, o) in enumerate(zip(prompts, options)) if _fits(tokenizer, p, o, max_length)
    ]
    generated: list[str] = [""] * len(records)
    scores: list[list[tuple[float, int]]] = [[] for _ in records]
    if shared:
        texts, got = _generate_and_score_options(
            model,
            tokenizer,
            [prompts[i] for i in shared],
            [options[i] for i in shared],
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            progress=progress,
        )
        for i, text, score in zip(shared, texts, got, strict=True):
            generated[i], scores[i] = text, score
    cut = sorted(set(range(len(records))) - set(shared))
    if cut:
        texts = generate_greedy(
            model, tokenizer, [prompts[i] for i in cut], max_new_tokens, batch_size
        )
        cut_mc = [i for i in cut if records[i].choices]
        got = choice_logprobs(
            model,
            tokenizer,
            [records[i] for i in cut_mc],
            style=mc_style,
            batch_size=batch_size,
            max_length=max_length,
        )
        for i, text in zip(cut, texts, strict=True):
            generated[i] = text
        for i, score in zip(cut_mc, got, strict=True):
            scores[i] = score
    result = _exact_match_result(records, kinds, golds, generated)
    mc_index = [i for i, r in enumerate(records) if r.choices]
    mc = _choice_result(
        [records[i] for i in mc_index],
        [mc_golds[records[i].id] for i in mc_index],
        [scores[i] for i in mc_index],
        mc_style,
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


def _fits(tokenizer, prompt: str, options: Sequence[str], max_length: int) -> bool:
    """Whether the separate passes would keep the whole prompt (see evaluate_model)."""
    length = len(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    longest = max(
        (len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in options), default=0
    )
    return length <= MAX_PROMPT_LENGTH and length + longest <= max_length


def default_max_new_tokens(tokenizer, records: Sequence[Record], cap: int = 512) -> int:
    """Room to generate: 1.5x the longest gold output in tokens, plus 8, at most `cap`."""
    longest = max(len(tokenizer(r.output, add_special_tokens=False)["input_ids"]) for r in records)
    return min(cap, int(1.5 * longest) + 8)
