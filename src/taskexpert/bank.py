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
