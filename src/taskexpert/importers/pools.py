"""Importers for the open instruction pool: FLAN v2 CoT, T0 (P3), Self-Instruct seed and
user-oriented tasks, Code Alpaca. Each keeps the dataset's own provenance in `source`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from taskexpert.errors import InputError
from taskexpert.importers.readers import (
    answer_record,
    iter_delimited,
    iter_objects,
    normalize_short_answer,
    optional_str,
    require_id,
    require_list,
    require_str,
    require_text,
    resolve_files,
)
from taskexpert.records import Record, parse_record

_FLAN_COLUMNS = ("question", "answer", "rationale")
_GPT3_END = "<|endoftext|>"


def import_flan_cot(src: Path) -> Iterator[Record]:
    """FLAN v2 CoT TSV (question, answer, rationale; no header; '\\n' escapes), file or folder."""
    for path in resolve_files(src, ["*_train.tsv", "*.tsv"]):
        name = path.stem.removesuffix("_train")
        rows = iter_delimited(path, "\t", header=False, quoting=csv.QUOTE_NONE)
        index = 0
        for line, row in rows:
            if not row:
                continue
            if len(row) != 3:
                raise InputError(
                    f"expected 3 tab-separated cells (question, answer, rationale), got {len(row)}",
                    path,
                    line,
                )
            cells = [cell.replace("\\n", "\n").strip() for cell in row]
            for column, cell in zip(_FLAN_COLUMNS[:2], cells):
                if not cell:
                    raise InputError("empty cell", path, line, column)
            question, answer, rationale = cells
            fields = {
                "id": f"flan_cot-{name}-{index:05d}",
                "instruction": question,
                "answer": normalize_short_answer(answer),
                "rationale": rationale or None,
                "source": f"flan_cot/{name}",
            }
            yield answer_record(fields, path, line)
            index += 1


def import_t0(src: Path) -> Iterator[Record]:
    """Self-Instruct's T0/P3 sample (prompt, completion, dataset); source = 't0/<dataset>'."""
    for path in resolve_files(src, ["t0_*.jsonl"], single=True):
        for line, obj in iter_objects(path):
            record_id = require_id(obj, "id", path, line)
            completion = require_str(obj, "completion", path, line)
            fields = {
                "id": f"t0-{record_id}",
                "instruction": require_text(obj, "prompt", path, line).strip(),
                "output": completion.strip().removesuffix(_GPT3_END).strip(),
                "source": f"t0/{require_str(obj, 'dataset', path, line)}",
            }
            yield parse_record(fields, path, line)


def _import_task_instances(src: Path, pattern: str, source: str) -> Iterator[Record]:
    """Self-Instruct task files (id, instruction, instances): one record per instance."""
    (path,) = resolve_files(src, [pattern], single=True)
    for line, obj in iter_objects(path):
        task_id = require_id(obj, "id", path, line)
        instruction = require_text(obj, "instruction", path, line).strip()
        for number, instance in enumerate(require_list(obj, "instances", path, line)):
            field = f"instances.{number}"
            if not isinstance(instance, dict):
                raise InputError("expected an object with input and output", path, line, field)
            named = {f"{field}.{key}": value for key, value in instance.items()}
            fields = {
                "id": f"{task_id}-{number}",
                "instruction": instruction,
                "input": optional_str(named, f"{field}.input", path, line).strip(),
                "output": require_str(named, f"{field}.output", path, line).strip(),
                "source": source,
            }
            yield parse_record(fields, path, line)


def import_seed_tasks(src: Path) -> Iterator[Record]:
    """Self-Instruct's 175 human-written seed tasks, one record per instance."""
    return _import_task_instances(src, "seed_tasks*.jsonl", "self_instruct/seed")


def import_user_oriented(src: Path) -> Iterator[Record]:
    """Self-Instruct's 252 expert-written user-oriented tasks, one record per instance."""
    return _import_task_instances(src, "user_oriented*.jsonl", "self_instruct/user_oriented")


def import_codealpaca(src: Path) -> Iterator[Record]:
    """Code Alpaca JSON list (instruction, input, output); licence CC BY-NC 4.0."""
    (path,) = resolve_files(src, ["code_alpaca*.json", "*.json"], single=True)
    for index, (line, obj) in enumerate(iter_objects(path)):
        fields = {
            "id": f"codealpaca-{index:05d}",
            "instruction": require_text(obj, "instruction", path, line).strip(),
            "input": optional_str(obj, "input", path, line).strip(),
            "output": require_str(obj, "output", path, line).strip(),
            "source": "codealpaca",
        }
        yield parse_record(fields, path, line)
