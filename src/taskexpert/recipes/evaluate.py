"""Evaluation as a run: check the test set and model parts, load, score, write eval.json.

Kept apart from the CLI (`commands/evaluate.py` only parses and prints) so Python callers and
other recipes run the same thing; the scoring itself is `taskexpert.evaluate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from taskexpert.configs import Cli
from taskexpert.errors import InputError
from taskexpert.recipes.common_options import LoadSettings


def attach_for_eval(
    model,
    adapter: Path | None = None,
    moe: Path | None = None,
    allow_pickle: bool = False,
    loaded=None,
    allow_other_base: bool = False,
):
    """The base alone, with a PEFT LoRA, or with a saved mixture; misfits are InputErrors.
    `loaded`: the adapter's `LoraAdapter`, when it was read already."""
    if adapter is not None and moe is not None:
        raise InputError("give --adapter or --moe, not both", field="adapter")
    if adapter is not None:
        from taskexpert.peft_glue import attach_checked

        return attach_checked(
            model,
            adapter,
            loaded=loaded,
            allow_pickle=allow_pickle,
            allow_other_base=allow_other_base,
        )
    if moe is not None:
        from taskexpert.moe import load_mixture

        return load_mixture(model, moe).eval()
    return model


def load_for_eval(
    base: str,
    adapter: Path | None,
    moe: Path | None,
    *,
    allow_pickle: bool = False,
    allow_other_base: bool = False,
    trust_remote_code: bool = False,
    device: str = "auto",
    dtype: str = "float32",
    progress: bool = True,
):
    """(model, tokenizer): the base with the adapter or mixture attached; the adapter and the
    mixture config are read first, so a bad one fails before the base loads."""
    from taskexpert.bank import load_adapter
    from taskexpert.models import load_base
    from taskexpert.moe.config import MoeConfig

    for path, flag in ((adapter, "adapter"), (moe, "moe")):
        if path is not None and not Path(path).is_dir():
            raise InputError("not a directory", path, field=flag)
    if adapter is not None and moe is not None:
        raise InputError("give --adapter or --moe, not both", field="adapter")
    loaded = load_adapter(adapter, allow_pickle=allow_pickle) if adapter is not None else None
    if moe is not None:
        MoeConfig.load(moe)
    model, tokenizer = load_base(
        base,
        dtype=dtype,
        device=device,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        progress=progress,
    )
    model = attach_for_eval(
        model, adapter, moe, allow_pickle, loaded=loaded, allow_other_base=allow_other_base
    )
    return model, tokenizer


def run_evaluate(
    base: str,
    test: Path | None,
    out: Path,
    *,
    adapter: Path | None = None,
    moe: Path | None = None,
    routing: Path | None = None,
    harness: str | None = None,
    include_path: Path | None = None,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 32,
    kind: str | None = None,
    multiple_choice: bool = True,
    mc_style: str = "answer",
    allow_pickle: bool = False,
    allow_other_base: bool = False,
    trust_remote_code: bool = False,
    device: str = "auto",
    dtype: str = "float32",
    progress: bool = True,
) -> dict:
    """Check inputs, load the model, evaluate, write eval.json atomically; returns its content.
    `routing`: also write the mixture's routing diagnostics there (recipes/routing.py), on the
    model already loaded.

    With `harness` (lm-eval task names) lm-evaluation-harness scores the loaded model instead
    of `test` (`recipes.harness_eval`)."""
    if harness is not None:
        if test is not None:
            raise InputError("give --test or --harness, not both", field="harness")
        own = {"kind": kind, "max-new-tokens": max_new_tokens}
        own |= {"mc-style": mc_style if mc_style != "answer" else None}
        own |= {"no-mc": True if not multiple_choice else None}
        own |= {"routing": routing}
        given = next((flag for flag, value in own.items() if value is not None), None)
        if given is not None:
            raise InputError("applies to --test only (the lm-eval task decides)", field=given)
        from taskexpert.recipes.harness_eval import run_harness_evaluate

        return run_harness_evaluate(
            base,
            harness,
            out,
            adapter=adapter,
            moe=moe,
            include_path=include_path,
            limit=limit,
            batch_size=batch_size,
            allow_pickle=allow_pickle,
            allow_other_base=allow_other_base,
            trust_remote_code=trust_remote_code,
            device=device,
            dtype=dtype,
            progress=progress,
        )
    if test is None:
        raise InputError("give --test (or --harness TASKS)", field="test")
    for flag, value in (("include-path", include_path), ("limit", limit)):
        if value is not None:
            raise InputError("applies to --harness only", field=flag)
    from taskexpert.evaluate import (
        default_max_new_tokens,
        evaluate_model,
        gold_answer,
        gold_choice,
    )
    from taskexpert.io import check_output, write_json
    from taskexpert.prompts import infer_answer_kind
    from taskexpert.records import load_records

    out = Path(out)
    check_output(out)
    if out.resolve() == Path(test).resolve():
        raise InputError("output would overwrite the test file", out, field="out")
    if routing is not None:
        if moe is None:
            raise InputError("routing diagnostics need a mixture (--moe)", field="routing")
        check_output(routing, field="routing")
        if Path(routing).resolve() in (out.resolve(), Path(test).resolve()):
            raise InputError("would overwrite eval.json or the test file", routing, field="routing")
    if kind not in (None, "letter", "number", "yesno", "text"):
        raise InputError(f"unknown answer kind {kind!r}", field="kind")
    if mc_style not in ("answer", "text"):
        raise InputError(f"unknown multiple-choice style {mc_style!r}", field="mc-style")
    if batch_size < 1:
        raise InputError("must be at least 1", field="batch-size")
    records = load_records(test)
    for record in records:  # every gold answer is readable before any model loads
        try:
            gold_answer(record, kind or infer_answer_kind(record))
            if multiple_choice and record.choices:
                gold_choice(record)
        except InputError as exc:
            raise InputError(exc.reason, test, field=exc.field) from None
    model, tokenizer = load_for_eval(
        base,
        adapter,
        moe,
        allow_pickle=allow_pickle,
        allow_other_base=allow_other_base,
        trust_remote_code=trust_remote_code,
        device=device,
        dtype=dtype,
        progress=progress,
    )
    if max_new_tokens is None:
        max_new_tokens = default_max_new_tokens(tokenizer, records)
    try:
        result = evaluate_model(
            model,
            tokenizer,
            records,
            kind=kind,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            multiple_choice=multiple_choice,
            mc_style=mc_style,
            progress=progress,
        )
    except InputError as exc:
        raise InputError(exc.reason, test, field=exc.field) from None
    from taskexpert.artifacts import EvalReport

    predictions = result.pop("predictions")
    report = {
        **result,
        "model": {
            "base": str(base),
            "adapter": str(adapter) if adapter else None,
            "moe": str(moe) if moe else None,
        },
        "test": str(test),
        "settings": {
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "kind": kind or "inferred per record",
            "multiple_choice_style": mc_style if multiple_choice else None,
        },
        "predictions": predictions,
    }
    report = EvalReport.model_validate(report).dump()
    write_json(out, report)
    if routing is not None:
        from taskexpert.recipes.routing import measure_split_routing

        diagnostics = measure_split_routing(model, tokenizer, records, test, batch_size)
        write_json(routing, diagnostics.to_json())
    return report


class EvaluateConfig(LoadSettings):
    """evaluate's settings, named as run_evaluate's keywords; its data (--base, --test, --out,
    --adapter, --moe) are plain options."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = Field(
        None, description="Generation length [default: 1.5x the longest output]."
    )
    batch_size: int = Field(32, description="Examples per forward pass.")
    kind: Literal["letter", "number", "yesno", "text"] | None = Field(
        None, description="Answer extractor: letter, number, yesno, text [default: inferred]."
    )
    mc_style: Literal["answer", "text"] = Field(
        "answer",
        description="Multiple choice: score 'The answer is X.' (answer) or the option text (text).",
    )
    multiple_choice: Annotated[bool, Cli(flag="--no-mc", help="Skip multiple-choice scoring.")] = (
        Field(True, description="Score multiple choice where records have choices.")
    )


class EvaluateVerbConfig(EvaluateConfig):
    """The evaluate verb's settings: EvaluateConfig plus lm-evaluation-harness mode. Kept out
    of EvaluateConfig because the run config's evaluation (`run_config.EvalSection`) is
    taskexpert's own, and its stage digests must not change."""

    harness: str | None = Field(
        None,
        description="lm-evaluation-harness tasks (comma-separated) to run instead of --test "
        "(needs pip install 'taskexpert[eval]').",
    )
    include_path: Path | None = Field(
        None, description="A directory of lm-eval task YAMLs (from export-task) for --harness."
    )
    limit: int | None = Field(None, description="--harness: at most this many items per task.")
