"""The files one stage hands to the next, as pydantic models that both write and read them.

A stage writes its artifact through the model (so what it writes has the documented shape)
and the next stage reads it through the same model, once, at the boundary: a bad file fails
there with an InputError naming the file and the key path (`scores.e0.em`), not later as a
KeyError deep in training. The on-disk format is the one documented in docs/design.md.

experts.json (select-experts -> train-moe): `ExpertsDocument`. Only `chosen` is required on
read, so a hand-written `{"chosen": [...], "bank": "..."}` works; select-experts writes every
section. `<out>.summary.json` (select-data): `SelectionSummary`. eval.json (evaluate):
`EvalReport`. These two are written through their models; no stage reads them back yet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    field_validator,
    model_serializer,
)

from taskexpert.errors import InputError


def _number(value: Any) -> Any:
    if value == "inf" or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    raise ValueError('expected a number or "inf"')


# JSON has no inf: scores that overflow are written as the word (scoring.json_number)
Number = Annotated[Any, BeforeValidator(_number)]


def _path_text(value: Any) -> Any:
    if value is not None and not isinstance(value, str):
        raise ValueError("expected a path")
    return value


class ScoreRow(BaseModel):
    """One row of experts.json's `scores`: a model's K-shot scores and the verdict on it.

    Extra keys are the reported reasoning-score variants (`rppl_relative`, ...), numbers."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Number]

    em: float
    rppl: Number
    ppl: Number
    seconds: float
    quality: float | None = None  # adapters only, not the base model's row
    decision: str | None = None

    @model_serializer(mode="wrap")
    def _in_written_order(self, handler) -> dict:
        """em, rppl, ppl, seconds, the variants, quality, decision: the order scoring writes."""
        data = handler(self)
        head = {k: data[k] for k in ("em", "rppl", "ppl", "seconds")}
        variants = {k: v for k, v in data.items() if k not in type(self).model_fields}
        tail = {k: data[k] for k in ("quality", "decision") if data.get(k) is not None}
        return {**head, **variants, **tail}


class SimilarityDocument(BaseModel):
    method: str
    names: list[str]
    matrix: list[list[float]]


class GroupSummary(BaseModel):
    search: str
    mean_quality: float
    mean_similarity: float | None
    routed_rppl: Number | None


class KShotSummary(BaseModel):
    size: int
    with_rationale: int


class ExpertsInputs(BaseModel):
    """Where select-experts' inputs were: train-moe finds the bank through `bank`."""

    model_config = ConfigDict(extra="allow")

    base: str | None = None
    bank: str | None = None
    kshot: str | None = None

    check_paths = field_validator("base", "bank", "kshot", mode="before")(_path_text)


class ExpertsDocument(BaseModel):
    """experts.json: the chosen experts, why, and every adapter's scores and verdict."""

    model_config = ConfigDict(extra="allow")

    chosen: list[str]
    reason: str | None = None
    scores: dict[str, ScoreRow] | None = None
    rejected: dict[str, str] | None = None
    similarity: SimilarityDocument | None = None
    group: GroupSummary | None = None
    kshot: KShotSummary | None = None
    warnings: list[str] | None = None
    config: dict[str, Any] | None = None  # ExpertSelectionConfig, as it was when written
    inputs: ExpertsInputs | None = None
    bank: str | None = None  # hand-written files may name the bank here instead of inputs

    @field_validator("chosen", mode="before")
    @classmethod
    def _adapter_names(cls, value: Any) -> Any:
        if not isinstance(value, list) or not value:
            raise ValueError("expected a non-empty list of adapter names")
        if not all(isinstance(name, str) and name.strip() for name in value):
            raise ValueError("every entry must be an adapter name (a string)")
        twice = sorted({name for name in value if value.count(name) > 1})
        if twice:
            raise ValueError(f"adapter {twice[0]!r} is chosen twice")
        return value

    check_bank = field_validator("bank", mode="before")(_path_text)

    @model_serializer(mode="wrap")
    def _written_sections(self, handler) -> dict:
        """Sections a file does not have are left out, not written as null."""
        return {k: v for k, v in handler(self).items() if v is not None}

    def bank_path(self) -> Path | None:
        """The bank it names: top-level `bank` (hand-written files) first, then `inputs.bank`."""
        bank = self.bank or (self.inputs.bank if self.inputs is not None else None)
        return Path(bank) if bank else None

    def dump(self) -> dict:
        """The JSON document, as written to disk."""
        return self.model_dump(mode="json")


class _Document(BaseModel):
    """A written file whose keys are exactly those it was given: optional keys a run did not
    produce stay out of the file, keys it gave as null are written as null."""

    def dump(self) -> dict:
        return self.model_dump(mode="json", exclude_unset=True)


# ---- <out>.summary.json (select-data) ------------------------------------------------------


class CacheStats(BaseModel):
    dir: str
    hits: int
    misses: int


class SelectionSummary(_Document):
    """What select-data chose from where, with the timings; written beside the selection."""

    out: str
    pool_files: list[str]
    kshot_file: str
    mode: str
    encoder: str
    shortlist_encoder: str | None
    shortlist_size: int | None
    budget: int
    kshot_size: int
    pool_size: int
    excluded_kshot_duplicates: int
    selected: int
    dedup_threshold: int | float | None
    removed_duplicates: int
    selected_per_source: dict[str, int]
    pool_per_source: dict[str, int]
    score: dict[str, float]  # max, mean, min of the selected records' scores; {} if none
    vendi_score: float | None
    cache: CacheStats | None = None  # absent when the embedding cache is off
    timings_s: dict[str, float]


# ---- eval.json (evaluate) ------------------------------------------------------------------


class EvalPrediction(BaseModel):
    """One test record's verdict; records with choices add the `mc_*` and option log-probs."""

    model_config = ConfigDict(extra="allow")

    id: str
    prediction: str | None
    gold: str | None
    correct: bool
    kind: str
    generated: str


class EvalModel(BaseModel):
    base: str
    adapter: str | None
    moe: str | None


class EvalSettings(BaseModel):
    max_new_tokens: int
    batch_size: int
    kind: str
    multiple_choice_style: str | None


class EvalReport(_Document):
    """eval.json: exact match over the test file (and option scoring where it has choices)."""

    exact_match: float
    n: int
    correct: int
    multiple_choice_accuracy: float | None = None
    multiple_choice_accuracy_norm: float | None = None
    n_multiple_choice: int | None = None
    multiple_choice_style: str | None = None
    model: EvalModel
    test: str
    settings: EvalSettings
    predictions: list[EvalPrediction]


# ---- reading -------------------------------------------------------------------------------

_TYPE_WORDS = {
    "dict_type": "expected a JSON object",
    "model_type": "expected a JSON object",
    "model_attributes_type": "expected a JSON object",
    "list_type": "expected a list",
    "string_type": "expected a string",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "missing": "missing (required)",
}


def _first_problem(exc: ValidationError) -> tuple[str, str | None]:
    """(message, key path) of a validation error's first problem, in the file's terms."""
    error = exc.errors()[0]
    if error["type"] == "value_error":
        message = str(error["ctx"]["error"]) if "ctx" in error else error["msg"]
    else:
        message = _TYPE_WORDS.get(error["type"], error["msg"])
    return message, ".".join(str(part) for part in error["loc"]) or None


def read_json_object(path: str | Path, what: str) -> tuple[Path, dict]:
    """A JSON object from `path`; missing, unreadable or non-object files are InputErrors."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON ({exc.msg})", path, exc.lineno) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc.reason})", path) from None
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", path)
    return path, data


def validate_document(model: type[BaseModel], data: dict, path: str | Path):
    """`model` from a parsed file; the first problem becomes an InputError with its key path."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, field = _first_problem(exc)
        raise InputError(message, path, field=field) from None


def read_experts_document(path: str | Path) -> ExpertsDocument:
    """experts.json, validated: select-experts' output or a hand-written {"chosen", "bank"}."""
    path, data = read_json_object(path, "experts file")
    return validate_document(ExpertsDocument, data, path)
