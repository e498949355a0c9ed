"""Prompt formatting and answer extraction, shared by training, expert scoring and evaluation.

One prompt format everywhere matters: an expert scored or trained with one template and
evaluated with another is measured on the wrong thing. Models that ship a chat template
(e.g. SmolLM2-Instruct) use it; others get the compact Alpaca-style template below.
"""

from __future__ import annotations

import re
from typing import Literal

from taskexpert.records import Record

AnswerKind = Literal["letter", "number", "yesno", "text"]

ALPACA_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
ANSWER_PREFIX = "The answer is "


def format_prompt(record: Record, tokenizer=None, use_chat_template: bool | None = None) -> str:
    """The text a model is conditioned on; the target (output) follows it directly."""
    has_chat = tokenizer is not None and getattr(tokenizer, "chat_template", None)
    if use_chat_template is None:
        use_chat_template = bool(has_chat)
    if use_chat_template and has_chat:
        messages = [{"role": "user", "content": record.prompt_text}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if record.input:
        return ALPACA_WITH_INPUT.format(instruction=record.instruction, input=record.input)
    return ALPACA_TEMPLATE.format(instruction=record.instruction)


def reasoning_target(record: Record) -> str:
    """Rationale followed by the answer: what reasoning perplexity scores
    (docs/design.md Stage 1)."""
    if record.rationale and record.answer is not None:
        return f"{record.rationale.strip()}\n{ANSWER_PREFIX}{record.answer}."
    return record.output


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_LETTER = re.compile(r"(?:^|[\s(\[])([A-J])(?:[)\].:,]|\s|$)")
_YESNO = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
_ANSWER_IS = re.compile(r"(?:the )?answer is[:\s]*(.+)", re.IGNORECASE)
_GSM_MARK = re.compile(r"####\s*(.+)")


def infer_answer_kind(record: Record) -> AnswerKind:
    """Guess the extractor from the gold answer, so K-shot files need no extra flag."""
    answer = (record.answer or "").strip()
    if record.choices and re.fullmatch(r"\(?[A-J]\)?", answer):
        return "letter"
    if re.fullmatch(r"\(?[A-J]\)?", answer):
        return "letter"
    if answer.lower() in {"yes", "no", "true", "false"}:
        return "yesno"
    if re.fullmatch(r"-?\d[\d,]*(?:\.\d+)?", answer):
        return "number"
    return "text"


def _tail_after_marker(text: str) -> tuple[str, bool]:
    """What follows the last 'The answer is' / '####', and whether such a marker was found."""
    for pattern in (_GSM_MARK, _ANSWER_IS):
        matches = pattern.findall(text)
        if matches:
            return matches[-1].strip(), True
    return text.strip(), False


def extract_answer(text: str, kind: AnswerKind) -> str | None:
    """Pull the final answer of the given kind out of generated text (None when absent)."""
    tail, marked = _tail_after_marker(text)
    if kind == "number":
        # After a marker the first number is the answer; in free text, the last one usually is.
        numbers = _NUMBER.findall(tail)
        if not numbers:
            return None
        return normalize_answer(numbers[0] if marked else numbers[-1], kind)
    if kind == "letter":
        found = _LETTER.findall(" " + tail)
        return found[0] if found else None
    if kind == "yesno":
        found = _YESNO.findall(tail)
        return normalize_answer(found[0], kind) if found else None
    first_line = tail.splitlines()[0] if tail else ""
    return normalize_answer(first_line, kind) or None


def normalize_answer(answer: str | None, kind: AnswerKind) -> str:
    """Canonical form for exact match: numbers without commas or trailing zeros, etc."""
    if answer is None:
        return ""
    value = answer.strip()
    if kind == "number":
        value = value.replace(",", "").rstrip(".")
        try:
            number = float(value)
        except ValueError:
            return value
        return str(int(number)) if number.is_integer() else repr(number)
    if kind == "letter":
        return value.strip("() .:").upper()[:1]
    if kind == "yesno":
        lowered = value.lower().rstrip(".")
        return {"true": "yes", "false": "no"}.get(lowered, lowered)
    return value.rstrip(".").strip().lower()


def is_correct(generated: str, gold: str, kind: AnswerKind) -> bool:
    """Exact match of the extracted prediction against the normalised gold answer."""
    predicted = extract_answer(generated, kind)
    return predicted is not None and predicted == normalize_answer(gold, kind)
