"""`taskexpert run`'s one YAML file: inputs, budgets, seeds and every stage's settings.

Why one file: a run is only reproducible when everything that decides its numbers is written
down together; the manifest stores this config, and a stage reruns exactly when the part of
it that stage reads changes. Each stage's section is that stage's own settings model (the
same one its verb reads with --config), so a setting is written once.
"""

from __future__ import annotations

import difflib
import textwrap
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from taskexpert.errors import InputError
from taskexpert.experts.config import ExpertSelectionConfig
from taskexpert.moe.train import ADDED_LATER as TRAIN_ADDED_LATER
from taskexpert.moe.train import MoeTrainConfig
from taskexpert.recipes.common_options import LoadSettings, RaySettings
from taskexpert.recipes.evaluate import EvaluateConfig
from taskexpert.recipes.select_data import SelectDataConfig
from taskexpert.rundir import value_before
from taskexpert.selection.leakage import LeakageConfig
from taskexpert.verdict import WinnerRule

# What a run can compare; `moe` is the method, the rest are the baselines a user would try.
METHODS = ("moe", "base", "best_adapter", "uniform_merge", "plain_lora", "kshot_lora")
TRAINED = ("moe", "plain_lora", "kshot_lora")  # run once per seed; the others once
Method = Literal["moe", "base", "best_adapter", "uniform_merge", "plain_lora", "kshot_lora"]

# Keys a stage's model has but the run sets itself (per seed, or from the terminal).
RUN_OWNED = {"seed", "progress"}


class RuntimeSettings(LoadSettings, RaySettings):
    """How models load and whether select-experts and select-data run on Ray, shared by every
    stage (the verbs' --device, --dtype, --ray, ... options)."""


class LoraBaselineConfig(BaseModel):
    """The plain and K-shot LoRA baselines: the MoE's data, epochs and schedule, one adapter."""

    model_config = ConfigDict(extra="forbid")

    rank: int | None = Field(
        None, ge=1, description="LoRA rank (default: the chosen experts' rank)."
    )
    alpha: float | None = Field(
        None, gt=0, description="LoRA alpha (default: twice the rank, the experts' usual ratio)."
    )
    match_moe_params: bool = Field(
        False,
        description="Give the plain LoRA the rank whose trainable parameter count is closest "
        "to the mixture's (routers and experts), instead of `rank`.",
    )
    lr: float | None = Field(
        None, gt=0, description="Learning rate (default: the mixture's, train.lr)."
    )


class EvalSection(EvaluateConfig):
    """evaluate's settings (its runtime ones come from `runtime`) and the per-item score."""

    metric: Literal["auto", "exact_match", "multiple_choice"] = Field(
        "auto",
        description="Per-item score: auto = option scoring where a record has choices, "
        "exact match elsewhere.",
    )


class VerdictSettings(BaseModel):
    """How methods are compared."""

    model_config = ConfigDict(extra="forbid")

    confidence: float = Field(0.95, gt=0, lt=1, description="Interval coverage.")
    resamples: int = Field(2000, ge=100, description="Bootstrap replicates.")
    min_items: int = Field(
        30, ge=1, description="Warn when the evaluation has fewer items than this."
    )
    majority_floor: bool = Field(
        True,
        description="Show the K-shot's commonest answer given to every test item as a "
        "reference row, and say when the winner does not clear it.",
    )
    winner: WinnerRule = Field(
        "best",
        description="Which method final/ holds. best: the highest mean. simplest: the "
        "simplest method (base, best adapter, merge, K-shot LoRA, plain LoRA, mixture) "
        "within noise of the highest mean, so nothing more is deployed than the test set "
        "can justify.",
    )


RUNTIME_KEYS = set(RuntimeSettings.model_fields)
HIDDEN = RUN_OWNED | RUNTIME_KEYS  # in a stage's section: set by the run, or under `runtime`


class RunConfig(BaseModel):
    """Everything one `taskexpert run` reads. Paths are relative to the config file."""

    model_config = ConfigDict(extra="forbid")

    base: str = Field(description="Base model directory (Hugging Face layout), or 'smollm2'.")
    bank: Path = Field(description="Directory of PEFT LoRA adapters, or a list file.")
    kshot: Path = Field(description="K-shot records (JSONL with answers, ideally rationales).")
    pools: list[Path] = Field(
        min_length=1, description="Open instruction pool files (canonical JSONL)."
    )
    test: Path | None = Field(
        None,
        description="Test records to score every method on. Without one, `holdout` of the "
        "K-shot is held out: never used for selection or training.",
    )
    holdout: float = Field(
        0.3, gt=0, lt=1, description="Share of the K-shot held out when there is no test set."
    )
    budget: int = Field(ge=1, description="Pool records to select for training.")
    seeds: list[int] = Field(
        [0, 1, 2], min_length=1, description="Every trained method runs once per seed."
    )
    methods: list[Method] = Field(
        list(METHODS),
        min_length=1,
        description="moe (the method) and baselines: base, best_adapter (the bank adapter "
        "best on the K-shot), uniform_merge (of the chosen experts), plain_lora (on exactly "
        "the mixture's data), kshot_lora (on the K-shot alone).",
    )
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    select_experts: ExpertSelectionConfig = Field(default_factory=ExpertSelectionConfig)
    select_data: SelectDataConfig = Field(default_factory=SelectDataConfig)
    leakage: LeakageConfig = Field(default_factory=LeakageConfig)
    train: MoeTrainConfig = Field(default_factory=MoeTrainConfig)
    lora: LoraBaselineConfig = Field(default_factory=LoraBaselineConfig)
    evaluate: EvalSection = Field(default_factory=EvalSection)
    verdict: VerdictSettings = Field(default_factory=VerdictSettings)

    @field_validator("methods")
    @classmethod
    def _no_repeats(cls, methods: list[str]) -> list[str]:
        if len(set(methods)) != len(methods):
            raise ValueError("a method is listed twice")
        return methods

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("a seed is listed twice")
        return seeds

    def resolved(self, root: Path) -> RunConfig:
        """Relative paths read from `root` (the config file's folder); 'smollm2' stays."""

        def at(path: Path) -> Path:
            return path if path.is_absolute() else root / path

        base = self.base
        if base != "smollm2" and not Path(base).is_absolute():
            base = str(root / base)
        return self.model_copy(
            update={
                "base": base,
                "bank": at(self.bank),
                "kshot": at(self.kshot),
                "pools": [at(p) for p in self.pools],
                "test": at(self.test) if self.test is not None else None,
            }
        )


# ---- reading -------------------------------------------------------------------------------


def _section_model(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    info = model.model_fields.get(key)
    if info is None:
        return None
    annotation = info.annotation
    is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return annotation if is_section else None


def _hidden(model: type[BaseModel]) -> set[str]:
    """The keys a section may not set: those the run sets (none at the top, in `runtime`)."""
    return set() if model in (RunConfig, RuntimeSettings) else HIDDEN


def _check_keys(data: dict, model: type[BaseModel], path: Path, prefix: str = "") -> None:
    """An unknown or run-owned key is an error naming its full path and the closest key."""
    hidden = _hidden(model)
    known = [k for k in model.model_fields if k not in hidden]
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in known:
            if key in hidden:
                instead = {"seed": "the top-level 'seeds'", "progress": "--quiet"}.get(
                    key, f"'runtime.{key}'"
                )
                raise InputError(f"not a setting here; use {instead}", path, field=where)
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {prefix}{close[0]!r}?" if close else f"known: {', '.join(known)}"
            raise InputError(f"unknown setting; {hint}", path, field=where)
        section = _section_model(model, key)
        if section is not None:
            if not isinstance(value, dict):
                raise InputError("expected a mapping of settings", path, field=where)
            _check_keys(value, section, path, f"{where}.")


def _line_of(text: str, dotted: str) -> int | None:
    """The line of a (possibly nested) key in the YAML text, for the error message."""
    parts = dotted.split(".")
    depth = 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip()
        if stripped.startswith(f"{parts[depth]}:"):
            if depth == len(parts) - 1:
                return number
            depth += 1
    return None


def load_run_config(path: str | Path) -> RunConfig:
    """The run config in a YAML file, its relative paths resolved against the file's folder.

    Every problem is one InputError naming the file, the key path and (when found) its line."""
    from taskexpert.configs import read_yaml_mapping

    path = Path(path)
    data, text = read_yaml_mapping(path)
    try:
        _check_keys(data, RunConfig, path)
    except InputError as exc:
        raise InputError(exc.reason, path, _line_of(text, exc.field or ""), exc.field) from None
    return validate_run_config(data, path, text).resolved(path.parent.resolve())


def validate_run_config(data: dict, path: Path | None = None, text: str = "") -> RunConfig:
    """`data` as a RunConfig; a bad value is one InputError with its key path, and with the
    file and line when `data` came from the file `path` whose text is `text`."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"]
        if "input" in error and not isinstance(error["input"], dict | list):
            message += f", got {error['input']!r}"
        line = _line_of(text, where) if text else None
        raise InputError(message, path, line, where or None) from None


# ---- writing -------------------------------------------------------------------------------


def _comment(info, width: int, indent: str) -> list[str]:
    about = (info.description or "").strip()
    return [f"{indent}# {line}" for line in textwrap.wrap(about, width)] if about else []


def _dump_model(config: BaseModel, indent: str = "") -> list[str]:
    import yaml

    from taskexpert.configs import file_fields

    lines: list[str] = []
    fields = file_fields(type(config))
    hidden = _hidden(type(config))
    for name, info in fields.items():
        if name in hidden:
            continue
        value = getattr(config, name)
        lines.append("")
        lines.extend(_comment(info, 92 - len(indent), indent))
        if isinstance(value, BaseModel):
            lines.append(f"{indent}{name}:")
            lines.extend(_dump_model(value, indent + "  "))
            continue
        data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        data = str(data) if isinstance(data, Path) else data
        if isinstance(data, list):
            data = [str(v) if isinstance(v, Path) else v for v in data]
        flow = isinstance(data, list)  # lists on one line, the rest in block style
        text = yaml.safe_dump({name: data}, sort_keys=False, default_flow_style=flow).rstrip()
        text = text[1:-1] if flow and text.startswith("{") else text
        lines.extend(f"{indent}{line}" for line in text.splitlines())
    return lines


def dump_run_config(config: RunConfig, title: str = "taskexpert run") -> str:
    """The config as commented YAML (every setting under its description), loadable again."""
    head = [f"# {title}: `taskexpert run THIS_FILE`. Paths are relative to this file."]
    return "\n".join(head + _dump_model(config)) + "\n"


def settings_dict(config: RunConfig) -> dict[str, Any]:
    """The config as plain JSON data (for the manifest and stage keys)."""
    return config.model_dump(mode="json")


# Settings added after run directories existed, by section, with the value every run made
# before then used: a stage key leaves a setting out while it has that value, and a stored
# config without it reads as that value (not as today's default, which may have changed).
ADDED_LATER: dict[str, dict[str, object]] = {
    # when_none_pass: a finished select-experts stage had survivors, where both values agree;
    # family_weight_similarity: runs before it had no centered-weight family test
    "select_experts": {
        "max_kshot": None,
        "when_none_pass": "lift",
        "family_weight_similarity": None,
    },
    "train": TRAIN_ADDED_LATER,
    # verdicts before them showed no floor and took the highest mean
    "verdict": {"majority_floor": False, "winner": "best"},
}


def keyed_settings(section: str, settings: BaseModel, exclude: set[str] | None = None) -> dict:
    """A section's settings for a stage key (JSON data, less `exclude` and the ADDED_LATER
    settings still at the value runs had before they existed)."""
    later = ADDED_LATER.get(section, {})
    return {
        key: value
        for key, value in settings.model_dump(mode="json", exclude=exclude).items()
        if key not in later or getattr(settings, key) != later[key]
    }


def default_of(key: str) -> object:
    """The value a run directory made before a dotted config key existed had for it (its
    ADDED_LATER value, else the default), so it is not refused as made with another config;
    None where none."""
    model: type[BaseModel] | None = RunConfig
    *parents, name = key.split(".")
    for parent in parents:
        model = _section_model(model, parent) if model else None
    later = ADDED_LATER.get(parents[0], {}) if len(parents) == 1 else {}
    return value_before(name, model, later)
