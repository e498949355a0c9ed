"""Settings shared by every run that loads a base model, written once (flag, default, help).

Typer-free so recipes' configs (and the run config's `runtime` section) use them through
`configs.shared_field`; verb_command turns those fields into the verbs' options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True)
class SharedOption:
    """One shared setting: its command-line flag, default and help."""

    flag: str
    default: Any
    help: str


ALLOW_PICKLE = SharedOption(
    "--allow-pickle", False, "Also load pickle (.bin) weights; they can run code."
)
TRUST_REMOTE_CODE = SharedOption(
    "--trust-remote-code", False, "Run model code shipped with the base model."
)
DEVICE = SharedOption("--device", "auto", "auto, cpu, cuda, mps.")
DTYPE = SharedOption("--dtype", "float32", "float32, bfloat16 or float16.")
ALLOW_OTHER_BASE = SharedOption(
    "--allow-other-base",
    False,
    "Use adapters whose adapter_config.json names another base model (refused otherwise).",
)


def _field(option: SharedOption) -> Any:
    from pydantic import Field

    return Field(option.default, description=option.help)


class LoadSettings(BaseModel):
    """How a run loads the base model and adapters: the one definition every config that loads
    a base inherits (select-experts, train-moe, evaluate and the run config's `runtime`)."""

    model_config = ConfigDict(extra="forbid")

    allow_pickle: bool = _field(ALLOW_PICKLE)
    allow_other_base: bool = _field(ALLOW_OTHER_BASE)
    trust_remote_code: bool = _field(TRUST_REMOTE_CODE)
    device: str = _field(DEVICE)
    dtype: str = _field(DTYPE)


RAY = SharedOption(
    "--ray",
    None,
    "Run on Ray: a cluster address (host:port or ray://host:port), 'auto' (the running "
    "cluster or RAY_ADDRESS) or 'local' (start one here, stopped after). Needs the 'ray' extra; "
    "without it nothing imports Ray.",
)
RAY_ACTORS = SharedOption("--ray-actors", 2, "Ray actors (shards) with --ray.")
RAY_GPUS_PER_ACTOR = SharedOption(
    "--ray-gpus-per-actor",
    None,
    "GPUs each Ray actor asks for [default: 1 when the cluster has GPUs, else 0].",
)


class RaySettings(BaseModel):
    """Where and how wide a run scales out on Ray: the one definition the verbs that can
    (kcenter, select-data, diverseevol, select-experts) and the run config's `runtime`
    inherit. The picks never depend on it, so it is no part of any run identity."""

    model_config = ConfigDict(extra="forbid")

    ray: str | None = _field(RAY)
    ray_actors: int = _field(RAY_ACTORS)
    ray_gpus_per_actor: float | None = _field(RAY_GPUS_PER_ACTOR)


RAY_KEYS = frozenset(RaySettings.model_fields)
