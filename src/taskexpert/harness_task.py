"""Export a taskexpert test set (and its K-shot) as an lm-evaluation-harness task directory.

Why: lm-eval is the common yardstick; a task it runs unchanged (`lm_eval --include_path DIR
--tasks NAME`) lets anyone score any model on a taskexpert target with the same prompts and
answers taskexpert uses, without taskexpert installed. Everything is plain YAML and JSONL:
`dataset_path: json` reads the exported files (no hub access), the prompt is precomputed
(`prompts.format_prompt` without a tokenizer, i.e. the Alpaca template), and the answer
extractor is written as lm-eval regex filters (`answer_filters`).

Generation targets become `generate_until` + `exact_match`; records with `choices` become
`multiple_choice` (`acc` is taskexpert's summed-log-prob accuracy; lm-eval's `acc_norm`
normalises by bytes, taskexpert's by tokens). Known departures from taskexpert's own
extractor are listed in `EXTRACTOR_DIFFERENCES` and docs/design.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from taskexpert.errors import InputError
from taskexpert.records import Record

TaskType = Literal["auto", "generate", "multiple-choice"]
FEWSHOT_DELIMITER = "\n\n"
INVALID = "[invalid]"  # lm-eval's RegexFilter fallback: never equals a gold answer

# The answer markers of `prompts._tail_after_marker`, and "no later marker follows".
_MARK = r"(?:####|(?i:answer is))"
_LAST_MARK = _MARK + r"(?![\s\S]*" + _MARK + r")[:\s]*"
_NO_MARK = r"\A(?![\s\S]*" + _MARK + r")"
_NUMBER = r"(-?\d[\d,]*(?:\.\d+)?)"
_LETTER_END = r"(?=[)\].:,]|\s|$)"
_YESNO = r"\b((?i:yes|no|true|false))\b"
_LINE_END = r"[^\S\n]*\.*[^\S\n]*(?=\n|\Z)"

# Per answer kind: (after the last marker, with no marker at all). Each is one capture group;
# lm-eval's RegexFilter keeps the first non-empty group of the (single) match.
_PATTERNS = {
    # after a marker the first number on its line; without one the last number of the text
    "number": (r"[^\n]*?" + _NUMBER, r"[\s\S]*(?<![\d,.\-])" + _NUMBER),
    # the first standalone capital A-J
    "letter": (
        r"(?:[^\n]*?(?:[^\S\n]|[(\[]))??([A-J])" + _LETTER_END,
        r"\s*(?:[\s\S]*?[\s(\[])??([A-J])" + _LETTER_END,
    ),
    "yesno": (r"[^\n]*?" + _YESNO, r"[\s\S]*?" + _YESNO),
    # the first line, trailing dots and spaces dropped (lowercased by a filter)
    "text": (r"([^\n]*?)" + _LINE_END, r"\s*([^\n]*?)" + _LINE_END),
}

EXTRACTOR_DIFFERENCES = (
    "'####' and 'answer is' are one marker kind here (taskexpert prefers any '####', and "
    "with two markers on one line reads after the first); "
    "a generation ending in a bare marker scores wrong here (taskexpert reads the whole "
    "text); numbers are compared as written without commas ('5.0' is not '5' here)"
)


def answer_regex(kind: str) -> str:
    """The lm-eval `regex_pattern` extracting a `kind` answer as `prompts.extract_answer`
    does: after the last answer marker, else from the whole generation."""
    if kind not in _PATTERNS:
        raise InputError(f"unknown answer kind {kind!r}", field="kind")
    marked, unmarked = _PATTERNS[kind]
    return f"{_LAST_MARK}{marked}|{_NO_MARK}{unmarked}"


def answer_filters(kind: str) -> list[dict]:
    """The lm-eval filter pipeline: extract, then normalise as `prompts.normalize_answer`."""
    steps: list[dict] = [{"function": "regex", "regex_pattern": answer_regex(kind)}]
    if kind == "text":
        steps.append({"function": "lowercase"})
    if kind == "yesno":
        steps.append({"function": "lowercase"})
        mapping = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}
        steps.append({"function": "map", "mapping_dict": mapping, "default_value": INVALID})
    steps.append({"function": "take_first"})
    return steps


def extract_like_harness(text: str, kind: str) -> str:
    """What the exported filters make of one generation (commas dropped as the metric does):
    lets tests hold the regexes to `prompts.extract_answer` without running lm-eval."""
    match = re.findall(answer_regex(kind), text)
    if not match:
        return INVALID
    groups = match[0] if isinstance(match[0], tuple) else (match[0],)
    found = next((g for g in groups if g), None)
    if found is None:
        return INVALID
    found = found.strip()
    if kind == "text":
        found = found.lower()
    if kind == "yesno":
        found = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}.get(found.lower(), INVALID)
    if kind == "number":
        found = found.replace(",", "")
    return found


def task_kind(records: Sequence[Record], task_type: TaskType) -> str:
    """ "generate" or "multiple-choice": auto picks multiple choice when every record has
    choices; a forced multiple choice needs them on every record."""
    with_choices = sum(1 for r in records if r.choices)
    if task_type == "generate":
        return "generate"
    if task_type == "multiple-choice" or with_choices == len(records):
        missing = next((r for r in records if not r.choices), None)
        if missing is not None:
            raise InputError(
                f"record {missing.id!r} has no choices (a multiple-choice task needs them "
                "on every record)",
                field="choices",
            )
        return "multiple-choice"
    return "generate"


def answer_kind_of(records: Sequence[Record], kind: str | None) -> str:
    """One extractor for the task: `kind`, else the kind inferred from every gold answer."""
    from taskexpert.prompts import infer_answer_kind

    if kind is not None:
        return kind
    kinds = {infer_answer_kind(r) for r in records}
    if len(kinds) > 1:
        raise InputError(
            f"records have answers of several kinds ({', '.join(sorted(kinds))}); "
            "give --kind to use one extractor",
            field="answer",
        )
    return kinds.pop()


def task_document(record: Record, kind: str | None, task: str, mc_style: str) -> dict:
    """One JSONL row: the precomputed prompt plus what the task's target fields read.
    `kind` None: the record's own inferred answer kind."""
    from taskexpert.evaluate import gold_answer, gold_choice, option_continuations
    from taskexpert.prompts import format_prompt, infer_answer_kind

    doc = {
        "id": record.id,
        "prompt": format_prompt(record, None),
        "prompt_text": record.prompt_text,  # for `--apply_chat_template` users
        "output": record.output,
        "answer": gold_answer(record, kind or infer_answer_kind(record)),
    }
    if task == "multiple-choice":
        doc["choices"] = option_continuations(record, mc_style)
        doc["gold"] = gold_choice(record)
    return doc


def task_config(
    name: str,
    task: str,
    kind: str | None,
    data_files: dict[str, str],
    *,
    max_gen_toks: int,
) -> dict:
    """The task YAML's content (lm-eval 0.4 TaskConfig keys)."""
    config: dict = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": data_files},
        "test_split": "test",
        "num_fewshot": 0,  # taskexpert evaluates zero-shot; --num_fewshot K uses the K-shot
        "doc_to_text": "prompt",
        "target_delimiter": "",  # the prompt ends with its own "### Response:\n"
        "fewshot_delimiter": FEWSHOT_DELIMITER,
    }
    if "fewshot" in data_files:
        config["fewshot_split"] = "fewshot"
        config["fewshot_config"] = {"sampler": "first_n"}
    if task == "multiple-choice":
        config |= {
            "output_type": "multiple_choice",
            "doc_to_choice": "choices",
            "doc_to_target": "gold",
            "metric_list": [
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
            ],
        }
    else:
        metric = {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}
        if kind == "number":
            metric["regexes_to_ignore"] = [","]
        config |= {
            "output_type": "generate_until",
            "doc_to_target": "answer",
            "generation_kwargs": {"until": [], "do_sample": False, "max_gen_toks": max_gen_toks},
            "filter_list": [{"name": "taskexpert", "filter": answer_filters(kind)}],
            "metric_list": [metric],
        }
        if "fewshot" in data_files:  # a demonstration shows the whole worked output
            config["fewshot_config"]["doc_to_target"] = "output"
    config["metadata"] = {"version": 1.0, "answer_kind": kind}
    return config


def task_name(out: Path, name: str | None) -> str:
    """`name`, else the output directory's name, as an lm-eval task name."""
    chosen = name or Path(out).resolve().name
    cleaned = re.sub(r"[^A-Za-z0-9_]+", "_", chosen).strip("_")
    if not cleaned or (name is not None and cleaned != name):
        raise InputError(f"task name {chosen!r}: use letters, digits and underscores", field="name")
    return cleaned


def export_task(
    test: Sequence[Record],
    out: str | Path,
    *,
    kshot: Sequence[Record] = (),
    name: str | None = None,
    task_type: TaskType = "auto",
    kind: str | None = None,
    mc_style: str = "answer",
    max_gen_toks: int = 256,
    force: bool = False,
    sources: tuple[str | Path | None, str | Path | None] = (None, None),
) -> dict:
    """Write OUT/<name>.yaml, OUT/<name>_test.jsonl (and _fewshot.jsonl from the K-shot)
    atomically; returns {task, yaml, kind, answer_kind (None for multiple choice), n_test,
    n_fewshot}.

    The YAML names the data files by absolute path (lm-eval resolves relative ones against
    the working directory), so a moved directory is exported again. `sources`: the test and
    K-shot files, named by the errors about their records.
    """
    import yaml

    from taskexpert.io import atomic_dir

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise InputError("exists and is not empty (use --force to replace it)", out, field="out")
    for source in sources:
        if source is not None and out.resolve() in Path(source).resolve().parents:
            raise InputError(f"would replace the directory holding {source}", out, field="out")
    if not test:
        raise InputError("no test records", field="test")
    if mc_style not in ("answer", "text"):
        raise InputError(f"unknown multiple-choice style {mc_style!r}", field="mc-style")
    name = task_name(out, name)
    with _naming(sources[0]):
        task = task_kind(test, task_type)
        # multiple choice scores options, not extracted answers: any mix of kinds will do
        kind = answer_kind_of(test, kind) if task == "generate" else kind
        docs = [task_document(r, kind, task, mc_style) for r in test]
    with _naming(sources[1]):
        shots = [task_document(r, kind, task, mc_style) for r in kshot]
    final = out.resolve()
    data_files = {"test": str(final / f"{name}_test.jsonl")}
    if shots:
        data_files["fewshot"] = str(final / f"{name}_fewshot.jsonl")
    config = task_config(name, task, kind, data_files, max_gen_toks=max_gen_toks)
    with atomic_dir(out) as tmp:
        _write_jsonl(tmp / f"{name}_test.jsonl", docs)
        if shots:
            _write_jsonl(tmp / f"{name}_fewshot.jsonl", shots)
        text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=100)
        (tmp / f"{name}.yaml").write_text(text, encoding="utf-8")
    return {
        "task": name,
        "yaml": str(final / f"{name}.yaml"),
        "kind": task,
        "answer_kind": kind,
        "n_test": len(docs),
        "n_fewshot": len(shots),
    }


@contextmanager
def _naming(path: str | Path | None) -> Iterator[None]:
    """Record errors raised inside name `path` (the records' file)."""
    try:
        yield
    except InputError as exc:
        if path is None or exc.path is not None:
            raise
        raise InputError(exc.reason, path, field=exc.field) from None


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    import json

    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
