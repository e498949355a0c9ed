"""Importers for the target tasks: GSM8K, ARC-Challenge/ARC-Easy and BoolQ, the ROCKET ARC K-shot.

Multiple-choice questions from every source get one layout (question, then 'A. ...' lines) and
the answer as a letter, so a K-shot set and its test split prompt the model the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from taskexpert.errors import InputError
from taskexpert.importers.readers import (
    MAX_CHOICES,
    answer_record,
    check_choice_count,
    iter_objects,
    letter,
    multiple_choice_instruction,
    optional_str,
    require_list,
    require_str,
    require_text,
    split_file,
)
from taskexpert.records import Record

_CALCULATOR = re.compile(r"<<[^<>]*>>")


def import_gsm8k(src: Path, split: str | None = None) -> Iterator[Record]:
    """GSM8K: answer = the number after ####, rationale = the steps without <<calc>> notes."""
    path, split = split_file(src, split, default="train", pattern="{split}.jsonl")
    for index, (line, obj) in enumerate(iter_objects(path)):
        question = require_text(obj, "question", path, line)
        solution = require_str(obj, "answer", path, line)
        steps, marker, final = solution.rpartition("####")
        answer = final.strip().replace(",", "")
        if not marker or not answer:
            raise InputError("no final '#### <number>' line", path, line, "answer")
        fields = {
            "id": f"gsm8k-{split}-{index:05d}",
            "instruction": question.strip(),
            "answer": answer,
            "rationale": _CALCULATOR.sub("", steps).strip() or None,
            "source": "gsm8k",
        }
        yield answer_record(fields, path, line)


def _gold(obj: dict, choices: list, path: Path, line: int) -> int:
    gold = obj.get("gold")
    if gold is None:
        raise InputError("missing required field", path, line, "gold")
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise InputError(f"expected an index into the {len(choices)} choices", path, line, "gold")
    return gold


def import_llm_foundry(
    src: Path, name: str, split: str | None = None, lettered: bool = True
) -> Iterator[Record]:
    """llm-foundry eval rows (query, choices, gold): lettered MC (ARC) or a named choice (BoolQ)."""
    default = "validation" if name == "boolq" else "test"
    path, split = split_file(src, split, default=default, pattern=name + "_{split}.jsonl")
    for index, (line, obj) in enumerate(iter_objects(path)):
        query = require_text(obj, "query", path, line)
        choices = require_list(obj, "choices", path, line)
        if not all(isinstance(choice, str) for choice in choices):
            raise InputError("expected a list of strings", path, line, "choices")
        if lettered:
            check_choice_count(len(choices), path, line, "choices")
        gold = _gold(obj, choices, path, line)
        fields = {
            "id": f"{name}-{split}-{index:05d}",
            "instruction": multiple_choice_instruction(query, choices) if lettered else query,
            "answer": letter(gold) if lettered else choices[gold],
            "choices": choices,
            "source": name,
        }
        yield answer_record(fields, path, line)


def _parse_rocket_question(instruction: str) -> tuple[str, list[str], str]:
    """'Question: q A. x\\nB. y\\n...\\nAnswer:' -> question, options, label scheme ('A' or '1')."""
    body = instruction.strip().removesuffix("Answer:").strip()
    first, *rest = body.split("\n")
    if not rest:
        raise ValueError("no option lines")
    if len(rest) >= MAX_CHOICES:
        raise ValueError(f"more than {MAX_CHOICES} option lines")
    scheme = "1" if rest[0].startswith("2. ") else "A"
    labels = [str(i + 1) if scheme == "1" else letter(i) for i in range(len(rest) + 1)]
    cut = first.rfind(f" {labels[0]}. ")
    if cut < 0:
        raise ValueError(f"no option '{labels[0]}.' on the question line")
    lines = [first[cut + 1 :], *rest]
    options = []
    for label, text in zip(labels, lines):
        if not text.startswith(f"{label}. "):
            raise ValueError(f"expected option '{label}.', got {text[:20]!r}")
        options.append(text[len(label) + 2 :].strip())
    return first[:cut].strip(), options, scheme


def import_rocket_arc(src: Path, split: str | None = None) -> Iterator[Record]:
    """ROCKET's ARC-Challenge K-shot (plain or cot): answer letter, explanation as rationale."""
    path, split = split_file(src, split, default="cot_50shot", pattern="arc-c_{split}.jsonl")
    for index, (line, obj) in enumerate(iter_objects(path)):
        try:
            question, options, scheme = _parse_rocket_question(
                require_str(obj, "instruction", path, line)
            )
        except ValueError as exc:
            raise InputError(
                f"not a ROCKET multiple-choice prompt ({exc})", path, line, "instruction"
            ) from None
        head, _, explanation = require_str(obj, "output", path, line).strip().partition("\n")
        label = head.split(".", 1)[0].strip()
        labels = [str(i + 1) if scheme == "1" else letter(i) for i in range(len(options))]
        if label not in labels:
            raise InputError(
                f"output does not start with an option label ({head[:20]!r})", path, line, "output"
            )
        fields = {
            "id": f"rocket-{split}-{index:05d}",
            "instruction": multiple_choice_instruction(question, options),
            "input": optional_str(obj, "input", path, line),
            "answer": letter(labels.index(label)),
            "rationale": explanation.strip() or None,
            "choices": options,
            "source": "rocket/arc_challenge",
        }
        yield answer_record(fields, path, line)
