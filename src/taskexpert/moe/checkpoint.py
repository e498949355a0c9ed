"""A mixture on disk: `moe_config.json` + `moe_model.safetensors` (experts, routers and, when
the mixture has one, the shared expert's `<module>.shared.lora_A` / `.lora_B`; a directory
without them, as older versions wrote, is a mixture without shared expert).

Loading is strict: every tensor must be there and fit the base, and the base's weights must
match the fingerprint recorded at attach time, so a directory never silently lands on the
wrong model. The PEFT export merges the experts with fixed gates into one plain LoRA.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from taskexpert.errors import InputError
from taskexpert.io import atomic_dir
from taskexpert.moe.config import CONFIG_FILE, MoeConfig
from taskexpert.moe.model import (
    _base_linear,
    check_fingerprint,
    freeze_base,
    install_mixture,
    mixture_config,
    mixture_layers,
    resolve_gates,
)

WEIGHTS_FILE = "moe_model.safetensors"
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"


def _refuse_foreign_dir(path: Path, marker: str) -> None:
    """atomic_dir replaces `path` whole: never let that erase an unrelated directory."""
    if path.is_file() or (path.is_dir() and any(path.iterdir()) and not (path / marker).exists()):
        raise InputError(f"output exists and is not a previous {marker} directory", path)


def mixture_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Experts and routers by `<module>.{router.weight, lora_A.<e>, lora_B.<e>}`, and the
    shared expert by `<module>.shared.{lora_A, lora_B}` where there is one, on CPU."""
    state = {}
    for module, layer in mixture_layers(model).items():
        state[f"{module}.router.weight"] = layer.router.weight
        for e in range(layer.num_experts):
            state[f"{module}.lora_A.{e}"] = layer.lora_A[e]
            state[f"{module}.lora_B.{e}"] = layer.lora_B[e]
        if layer.shared is not None:
            state[f"{module}.shared.lora_A"] = layer.shared.lora_A
            state[f"{module}.shared.lora_B"] = layer.shared.lora_B
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_mixture(model: nn.Module, path: str | Path) -> Path:
    """Write the mixture directory atomically; returns its path."""
    from safetensors.torch import save_file

    path = Path(path)
    config = mixture_config(model)
    _refuse_foreign_dir(path, CONFIG_FILE)
    with atomic_dir(path) as tmp:
        config.save(tmp)
        save_file(mixture_state(model), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    return path


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise InputError(f"no {WEIGHTS_FILE} in the mixture directory", path)
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"corrupt safetensors file ({exc})", weights) from None


def _warn_if_renamed(base_model: nn.Module, config: MoeConfig) -> None:
    """Same weights under another name (a local copy of a hub model, say) only deserve a warning."""
    current = getattr(base_model, "name_or_path", None)
    recorded = config.base_model_name
    if recorded and current and Path(str(current)).name.lower() != Path(recorded).name.lower():
        warnings.warn(
            f"the mixture was built on {recorded!r} and is loaded onto {current!r}; "
            "their weights match, so loading goes ahead",
            stacklevel=3,
        )


def _shared_factors(
    base_model: nn.Module, config: MoeConfig, tensors: Mapping[str, torch.Tensor], weights: Path
) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
    """Each module's shared (A_s, B_s) from the file, checked against the config's rank and the
    base layer; None for a mixture without shared expert."""
    if config.shared_rank == 0:
        return None
    shared = {}
    for module in config.modules:
        linear = _base_linear(base_model, module, "the mixture", weights)
        A, B = tensors[f"{module}.shared.lora_A"], tensors[f"{module}.shared.lora_B"]
        want_A = (config.shared_rank, linear.in_features)
        want_B = (linear.out_features, config.shared_rank)
        if tuple(A.shape) != want_A or tuple(B.shape) != want_B:
            raise InputError(
                f"shared expert, module {module}: lora_A {tuple(A.shape)} and lora_B "
                f"{tuple(B.shape)}, expected {want_A} and {want_B} (shared_rank="
                f"{config.shared_rank}, base layer {linear.in_features} -> "
                f"{linear.out_features})",
                weights,
            )
        shared[module] = (A, B)
    return shared


def load_mixture(base_model: nn.Module, path: str | Path, freeze: bool = True) -> nn.Module:
    """Restore a saved mixture onto the base it was built on (errors on any other base)."""
    path = Path(path)
    config = MoeConfig.load(path)
    tensors = _read_weights(path)
    weights_file = path / WEIGHTS_FILE
    if not config.experts or not config.modules:
        raise InputError("the mixture config lists no experts or modules", path / CONFIG_FILE)
    expected = {f"{m}.router.weight" for m in config.modules} | {
        f"{m}.lora_{part}.{e}"
        for m in config.modules
        for part in "AB"
        for e in range(len(config.experts))
    }
    if config.shared_rank > 0:
        expected |= {f"{m}.shared.lora_{part}" for m in config.modules for part in "AB"}
    if expected != set(tensors):
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        what = f"missing tensor {missing[0]}" if missing else f"unexpected tensor {extra[0]}"
        if any(".shared." in key for key in missing + extra):
            what += f" (the config says shared_rank={config.shared_rank})"
        raise InputError(f"weights do not match {CONFIG_FILE}: {what}", weights_file)
    experts = {}
    for module in config.modules:
        linear = _base_linear(base_model, module, "the mixture", path)
        factors = []
        for e, expert in enumerate(config.experts):
            A, B = tensors[f"{module}.lora_A.{e}"], tensors[f"{module}.lora_B.{e}"]
            fits = (A.ndim, B.ndim) == (2, 2) and A.shape[1] == linear.in_features
            fits = fits and B.shape == (linear.out_features, A.shape[0])
            if not fits:
                raise InputError(
                    f"expert {expert.name!r}, module {module}: lora_A {tuple(A.shape)} and "
                    f"lora_B {tuple(B.shape)} do not fit the base layer "
                    f"({linear.in_features} -> {linear.out_features}); "
                    f"was the mixture built on another base ({config.base_model_name or '?'})?",
                    weights_file,
                )
            if A.shape[0] != expert.rank_of(module):
                raise InputError(
                    f"expert {expert.name!r}, module {module}: rank {A.shape[0]} but the config "
                    f"says {expert.rank_of(module)}",
                    weights_file,
                )
            factors.append((A, B, expert.scaling_of(module)))
        experts[module] = factors
    shared = _shared_factors(base_model, config, tensors, weights_file)
    check_fingerprint(base_model, config, path)
    _warn_if_renamed(base_model, config)
    install_mixture(base_model, config, experts, shared)
    with torch.no_grad():
        for module, layer in mixture_layers(base_model).items():
            router = tensors[f"{module}.router.weight"]
            if router.shape != layer.router.weight.shape:
                raise InputError(
                    f"router of {module} has shape {tuple(router.shape)}, expected "
                    f"{tuple(layer.router.weight.shape)}",
                    weights_file,
                )
            layer.router.weight.copy_(router)
    if freeze:
        freeze_base(base_model)
    return base_model


def export_merged_lora(
    model: nn.Module,
    path: str | Path,
    gates: str | Sequence[float] | Mapping[str, float] = "uniform",
) -> Path:
    """Write one plain PEFT LoRA equal to the mixture under fixed gates (lossy: no routing).

    The experts' factors are stacked, not averaged: A' = [A_1; A_2; ...] and
    B' = [g_1 s_1 B_1 | g_2 s_2 B_2 | ...], rank = sum of ranks, lora_alpha = rank (scaling 1),
    so B'A' = sum_e g_e s_e B_e A_e exactly; a shared expert is one more block at gate 1.
    What is lost is the per-token routing.
    """
    from taskexpert.moe.fold import write_stacked_lora

    path = Path(path)
    values = resolve_gates(model, gates)
    if not any(g != 0.0 for g in values) and mixture_config(model).shared_rank == 0:
        raise InputError("all gates are zero; the export would be the base model", field="gates")
    _refuse_foreign_dir(path, PEFT_CONFIG_FILE)
    with atomic_dir(path) as tmp:
        write_stacked_lora(model, dict.fromkeys(mixture_layers(model), values), tmp)
    return path
