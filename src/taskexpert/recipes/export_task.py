"""`taskexpert export-task`: a test set (and its K-shot) as an lm-evaluation-harness task.

The library is `taskexpert.harness_task`; this recipe reads the records, sizes the
generation length the way `evaluate` does, and writes the directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from taskexpert.errors import InputError

GENERATION_CAP = 512  # as evaluate.default_max_new_tokens


class ExportTaskConfig(BaseModel):
    """export-task's settings; its data (--test, --kshot, --out, --base) are plain options."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="Task name [default: the --out directory's name].")
    task_type: Literal["auto", "generate", "multiple-choice"] = Field(
        "auto",
        description="generate (exact match), multiple-choice (option log-likelihood) or auto "
        "(multiple choice when every record has choices).",
    )
    kind: Literal["letter", "number", "yesno", "text"] | None = Field(
        None, description="Answer extractor [default: inferred, one kind for the whole file]."
    )
    mc_style: Literal["answer", "text"] = Field(
        "answer",
        description="Multiple choice: score 'The answer is X.' (answer) or the option text (text).",
    )
    max_gen_toks: int | None = Field(
        None,
        description="Generation length [default: as evaluate, 1.5x the longest output in "
        "--base's tokens + 8; without --base counted in characters].",
    )
    force: bool = Field(False, description="Replace a non-empty --out directory.")


def generation_length(records, tokenizer=None) -> int:
    """evaluate's default generation length; characters stand in for tokens without a
    tokenizer (a token covers at least one character, so it is never shorter)."""
    from taskexpert.evaluate import default_max_new_tokens

    if tokenizer is not None:
        return default_max_new_tokens(tokenizer, records, cap=GENERATION_CAP)
    return min(GENERATION_CAP, int(1.5 * max(len(r.output) for r in records)) + 8)


def load_tokenizer(base: str | Path, trust_remote_code: bool = False):
    """A base model directory's tokenizer, offline."""
    from transformers import AutoTokenizer

    if not Path(base).is_dir():
        raise InputError("not a model directory", base, field="base")
    try:
        return AutoTokenizer.from_pretrained(
            str(base), local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load its tokenizer: {exc}", base, field="base") from None


def run_export_task(
    test: Path,
    out: Path,
    *,
    kshot: Path | None = None,
    base: str | Path | None = None,
    name: str | None = None,
    task_type: str = "auto",
    kind: str | None = None,
    mc_style: str = "answer",
    max_gen_toks: int | None = None,
    force: bool = False,
) -> dict:
    """Read, check and export; returns `harness_task.export_task`'s summary."""
    from taskexpert.harness_task import export_task
    from taskexpert.records import load_records

    records = load_records(test)
    if not records:
        raise InputError("no records", test, field="test")
    shots = load_records(kshot) if kshot is not None else []
    if max_gen_toks is not None and max_gen_toks < 1:
        raise InputError("must be at least 1", field="max-gen-toks")
    if max_gen_toks is None:
        tokenizer = load_tokenizer(base) if base is not None else None
        max_gen_toks = generation_length(records, tokenizer)
    return export_task(
        records,
        out,
        kshot=shots,
        name=name,
        task_type=task_type,
        kind=kind,
        mc_style=mc_style,
        max_gen_toks=max_gen_toks,
        force=force,
        sources=(test, kshot),
    )
