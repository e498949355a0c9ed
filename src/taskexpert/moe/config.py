"""The mixture's configuration: what the user chooses and what attaching the experts records.

It is saved beside the weights as `moe_config.json`, so a mixture directory is self-describing:
which experts it holds (with their own rank and alpha/r), how it routes, and which base model
(name and a weight fingerprint) it was built on, so loading it onto another base fails loudly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from taskexpert.errors import InputError
from taskexpert.io import write_json

CONFIG_FILE = "moe_config.json"
FORMAT_VERSION = 1


class ExpertSpec(BaseModel):
    """One expert: where it came from, its usual rank and scaling, and per-module exceptions."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    source: str | None = None  # the adapter directory it was read from (informational)
    rank: int = Field(ge=1)
    scaling: float  # alpha / r (or alpha / sqrt(r) for rsLoRA), the expert's own
    rank_pattern: dict[str, int] = Field(default_factory=dict)  # module -> rank, where different
    scaling_pattern: dict[str, float] = Field(default_factory=dict)  # module -> scaling, ditto

    def rank_of(self, module: str) -> int:
        return self.rank_pattern.get(module, self.rank)

    def scaling_of(self, module: str) -> float:
        return self.scaling_pattern.get(module, self.scaling)


class MoeConfig(BaseModel):
    """Routing choices (set by the user) plus the experts and base recorded at attach time."""

    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(default=2, ge=1)  # experts per token (paper: 2)
    # "fresh": small random routers at attach time; "kshot": the caller then runs
    # init_routers_from_kshot, which records "kshot" here once it has set them.
    router_init: Literal["fresh", "kshot"] = "fresh"
    router_init_std: float = Field(default=0.02, ge=0.0)  # std of a fresh router's weights
    router_seed: int = 0  # fresh routers are reproducible
    kshot_temperature: float = Field(default=4.0, gt=0.0)  # logit scale of K-shot routers
    load_balancing_coef: float = Field(default=0.0, ge=0.0)  # switch-style aux loss; 0 = off
    # An always-on shared LoRA beside the routed experts (MixLoRA, DeepSeekMoE): its rank
    # (0 = none) and alpha (None = twice the rank, the LoRA baselines' convention).
    shared_rank: int = Field(default=0, ge=0)
    shared_alpha: float | None = Field(default=None, gt=0.0)
    # Filled by attach_mixture from the adapters and the base model:
    experts: list[ExpertSpec] = Field(default_factory=list)
    target_modules: list[str] = Field(default_factory=list)  # suffixes, e.g. ["q_proj", "v_proj"]
    modules: list[str] = Field(default_factory=list)  # full names of every adapted linear
    base_model_name: str | None = None
    base_fingerprint: dict[str, list[float]] = Field(default_factory=dict)  # module -> samples
    format_version: int = FORMAT_VERSION

    @model_validator(mode="after")
    def _check_experts(self) -> MoeConfig:
        names = [e.name for e in self.experts]
        if len(set(names)) != len(names):
            raise ValueError(f"expert names must be unique, got {names}")
        if self.experts and self.top_k > len(self.experts):
            raise ValueError(f"top_k={self.top_k} exceeds the {len(self.experts)} experts")
        return self

    @property
    def expert_names(self) -> list[str]:
        return [e.name for e in self.experts]

    @property
    def shared_scaling(self) -> float:
        """The shared expert's alpha / r (alpha defaults to 2 r); 0 when there is none."""
        if self.shared_rank == 0:
            return 0.0
        alpha = self.shared_alpha if self.shared_alpha is not None else 2.0 * self.shared_rank
        return alpha / self.shared_rank

    def save(self, directory: str | Path) -> Path:
        """Write `moe_config.json` into `directory` (atomically). Without a shared expert its
        keys are left out, so the file is what versions before it wrote and they can read it."""
        path = Path(directory) / CONFIG_FILE
        exclude = {"shared_rank", "shared_alpha"} if self.shared_rank == 0 else None
        write_json(path, self.model_dump(mode="json", exclude=exclude))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> MoeConfig:
        """Read `moe_config.json`; errors name the file and the offending field."""
        path = Path(directory) / CONFIG_FILE
        if not path.is_file():
            raise InputError(f"not a mixture directory (no {CONFIG_FILE})", directory)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"unreadable mixture config ({exc})", path) from None
        version = data.get("format_version", FORMAT_VERSION) if isinstance(data, dict) else None
        if version is not None and not isinstance(version, int):
            raise InputError("expected an integer", path, field="format_version")
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise InputError(
                f"written by a newer taskexpert (format {data['format_version']})",
                path,
                field="format_version",
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(part) for part in error["loc"]) or None
            raise InputError(error["msg"], path, field=field) from None
