"""LoRA bank: read PEFT adapter directories into plain tensors, safely (safetensors only).

Stage 1 (diversity), Stage 3 (the mixture) and validation all need an adapter's factors
per module with its own alpha/r; reading them here once keeps PEFT's on-disk conventions
(key prefixes, rank/alpha patterns, rsLoRA) in one place.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from taskexpert.errors import InputError

CONFIG_FILE = "adapter_config.json"
SAFETENSORS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$"
)


@dataclass
class LoraModule:
    """One adapted linear layer: delta W = scaling * B @ A, A [r, in], B [out, r]."""

    A: torch.Tensor
    B: torch.Tensor
    alpha: float
    scaling: float

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def delta_weight(self) -> torch.Tensor:
        """The full update; only for small layers or tests (diversity works in r x r space)."""
        return self.scaling * (self.B.float() @ self.A.float())


@dataclass
class LoraAdapter:
    """A PEFT LoRA adapter as tensors keyed by the base model's module names."""

    name: str
    path: Path
    config: dict
    modules: dict[str, LoraModule] = field(default_factory=dict)

    @property
    def base_model_name(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    @property
    def target_modules(self) -> list[str]:
        return sorted({name.rsplit(".", 1)[-1] for name in self.modules})

    @property
    def ranks(self) -> set[int]:
        return {m.rank for m in self.modules.values()}


def _pattern_value(patterns: dict, module: str, default: float) -> float:
    """PEFT's rank/alpha patterns: a key matches the module name or a dotted suffix of it."""
    for key, value in (patterns or {}).items():
        if module == key or re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


def read_adapter_config(path: Path) -> dict:
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise InputError(f"not a PEFT adapter directory (no {CONFIG_FILE})", path)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"unreadable adapter config ({exc})", config_path) from None
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise InputError(f"peft_type is {peft_type}; only LoRA adapters are supported", config_path)
    if config.get("use_dora"):
        raise InputError("DoRA adapters are not plain LoRA and are not supported", config_path)
    if config.get("fan_in_fan_out"):
        raise InputError("fan_in_fan_out (Conv1D) adapters are not supported", config_path)
    return config


def _read_tensors(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    safetensors_path = path / SAFETENSORS_FILE
    if safetensors_path.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(safetensors_path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"corrupt safetensors file ({exc})", safetensors_path) from None
    pickle_path = path / PICKLE_FILE
    if pickle_path.is_file():
        if not allow_pickle:
            raise InputError(
                "only a pickle file (adapter_model.bin) was found; pickles can run code on "
                "load, so they are refused unless you pass --allow-pickle",
                pickle_path,
            )
        return torch.load(pickle_path, map_location="cpu", weights_only=True)
    raise InputError(f"no {SAFETENSORS_FILE} in the adapter directory", path)


def load_adapter(
    path: str | Path, name: str | None = None, allow_pickle: bool = False
) -> LoraAdapter:
    """Read one PEFT LoRA adapter directory; errors name the adapter and what is wrong."""
    path = Path(path)
    config = read_adapter_config(path)
    tensors = _read_tensors(path, allow_pickle)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise InputError(
                f"tensor {key!r} is not a LoRA factor (modules_to_save or biases are not "
                "supported by the mixture)",
                path,
            )
        parts.setdefault(match["module"], {})[match["part"]] = tensor
    adapter = LoraAdapter(name or path.name, path, config)
    for module, factors in sorted(parts.items()):
        if set(factors) != {"A", "B"}:
            raise InputError(f"module {module} has lora_{''.join(factors)} but not both", path)
        A, B = factors["A"], factors["B"]
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
            raise InputError(
                f"module {module}: lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)} "
                "do not form a rank-r pair",
                path,
            )
        rank = A.shape[0]
        alpha = float(
            _pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", rank))
        )
        scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        adapter.modules[module] = LoraModule(A, B, alpha, scaling)
    if not adapter.modules:
        raise InputError("adapter holds no LoRA weights", path)
    return adapter


# --- validation against a base model and bank loading ------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One finding about an adapter; errors make it unusable, warnings are only reported."""

    message: str
    fatal: bool = True

    def __str__(self) -> str:
        return self.message if self.fatal else f"warning: {self.message}"


def _short_name(name: str | None) -> str:
    """'org/Llama-2-7b' and '/models/Llama-2-7b/' name one model on two machines."""
    return str(name or "").rstrip("/").rsplit("/", 1)[-1].lower()


def _declared_rank(config: dict, module: str) -> int | None:
    rank = config.get("r")
    return int(_pattern_value(config.get("rank_pattern"), module, rank)) if rank else None


def validate_adapter(
    adapter: LoraAdapter, base_model: torch.nn.Module, allow_other_base: bool = False
) -> list[Problem]:
    """Everything that would make the adapter fail or mislead on this base model, by module.

    An adapter whose adapter_config.json names another base model is refused even when its
    shapes fit (a fine-tune of the same architecture fits and still means nothing here);
    `allow_other_base` makes that a warning, for a base saved under another name."""
    problems: list[Problem] = []
    base_name = getattr(getattr(base_model, "config", None), "_name_or_path", None) or getattr(
        base_model, "name_or_path", None
    )
    other_base = bool(
        adapter.base_model_name
        and base_name
        and (_short_name(adapter.base_model_name) != _short_name(base_name))
    )
    if other_base:
        problems.append(
            Problem(
                f"trained on base model {adapter.base_model_name!r}, loaded on {base_name!r}"
                + ("" if allow_other_base else " (--allow-other-base uses it all the same)"),
                fatal=not allow_other_base,
            )
        )
    base_modules = dict(base_model.named_modules())
    missing = [m for m in adapter.modules if m not in base_modules]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        problems.append(
            Problem(f"target module(s) not in the base model: {', '.join(missing[:3])}{more}")
        )
    for name, module in adapter.modules.items():
        layer = base_modules.get(name)
        if layer is None:
            continue
        in_features = getattr(layer, "in_features", None)
        out_features = getattr(layer, "out_features", None)
        if in_features is None or out_features is None:
            problems.append(
                Problem(f"module {name} is a {type(layer).__name__}, not a linear layer")
            )
            continue
        if module.A.shape[1] != in_features or module.B.shape[0] != out_features:
            problems.append(
                Problem(
                    f"module {name}: lora_A {tuple(module.A.shape)} / lora_B "
                    f"{tuple(module.B.shape)} do not fit the base layer "
                    f"({in_features} in, {out_features} out)"
                )
            )
            continue
        declared = _declared_rank(adapter.config, name)
        if declared is not None and declared != module.rank:
            problems.append(
                Problem(
                    f"module {name}: rank {module.rank} in the weights but r={declared} "
                    "in adapter_config.json"
                )
            )
        if module.rank > min(in_features, out_features):
            problems.append(
                Problem(
                    f"module {name}: rank {module.rank} exceeds the layer's size; "
                    "the update is not low-rank",
                    fatal=False,
                )
            )
        if not (torch.isfinite(module.A).all() and torch.isfinite(module.B).all()):
            problems.append(Problem(f"module {name}: weights contain NaN or inf"))
    if other_base and any(p.fatal for p in problems[1:]):
        # another base model's name *and* layers that do not fit: the name is the cause
        problems[0] = Problem(problems[0].message)
    return problems


def require_fit(
    adapter: LoraAdapter,
    base_model: torch.nn.Module,
    label: str,
    path: str | Path,
    allow_other_base: bool = False,
) -> None:
    """Raise the first fatal problem as an InputError: '<label> does not fit the base model'."""
    fatal = [p.message for p in validate_adapter(adapter, base_model, allow_other_base) if p.fatal]
    if fatal:
        raise InputError(f"{label} does not fit the base model: {fatal[0]}", path)


def _summary(errors: list[str], shown: int = 2) -> str:
    """The first problems in full and a count of the rest (a foreign adapter fails everywhere)."""
    more = len(errors) - shown
    return "; ".join(errors[:shown]) + (f"; and {more} more module(s) like these" if more else "")


@dataclass
class Bank:
    """Usable adapters (weights in memory, loaded once) and the rejected ones with reasons."""

    adapters: dict[str, LoraAdapter] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.adapters)

    @property
    def names(self) -> list[str]:
        return list(self.adapters)


def bank_entries(source: str | Path) -> list[tuple[str, Path, int | None]]:
    """(name, adapter dir, list-file line or None) of every adapter a bank names, unread.

    A bank is a directory of adapter directories, one adapter directory, or a list file
    (`path` or `name<TAB>path` per line, `#` comments, paths relative to the file). Cheap:
    callers that need a few adapters by name resolve them here and load only those.
    """
    source = Path(source)
    if source.is_file():
        entries, seen = [], {}
        for number, raw in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, _, path_text = line.partition("\t") if "\t" in line else ("", "", line)
            path = Path(path_text.strip()).expanduser()
            path = path if path.is_absolute() else source.parent / path
            name = name.strip() or path.name
            if name in seen:
                raise InputError(
                    f"adapter name {name!r} listed twice (first on line {seen[name]})",
                    source,
                    number,
                )
            seen[name] = number
            entries.append((name, path, number))
        return entries
    if not source.is_dir():
        raise InputError("bank not found: expected a directory of adapters or a list file", source)
    if (source / CONFIG_FILE).is_file():
        return [(source.name, source, None)]
    return [
        (child.name, child, None)
        for child in sorted(source.iterdir())
        if child.is_dir() and not child.name.startswith(".")
    ]


def load_bank(
    source: str | Path,
    base_model: torch.nn.Module | None = None,
    strict: bool = False,
    allow_pickle: bool = False,
    allow_other_base: bool = False,
) -> Bank:
    """Load and validate every adapter once; unfit ones are rejected by name (raise if strict)."""
    source = Path(source)
    bank = Bank()
    for name, path, line in bank_entries(source):
        where = (source, line) if line is not None else (path, None)
        try:
            adapter = load_adapter(path, name=name, allow_pickle=allow_pickle)
        except InputError as exc:
            if strict:
                raise InputError(f"adapter {name!r}: {exc}", *where) from None
            bank.rejected[name] = str(exc)
            continue
        problems = (
            validate_adapter(adapter, base_model, allow_other_base)
            if base_model is not None
            else []
        )
        errors = [p.message for p in problems if p.fatal]
        warnings = [p.message for p in problems if not p.fatal]
        if errors:
            if strict:
                raise InputError(f"adapter {name!r} does not fit the base model: {errors[0]}", path)
            bank.rejected[name] = _summary(errors)
            continue
        if warnings:
            bank.warnings[name] = warnings
        bank.adapters[name] = adapter
    if not bank.adapters:
        detail = "; ".join(f"{n}: {r}" for n, r in list(bank.rejected.items())[:3])
        raise InputError(
            "the bank holds no usable adapters" + (f" ({detail})" if detail else ""), source
        )
    return bank
