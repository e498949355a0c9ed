"""Attach LoRA experts as mixtures to any Hugging Face causal LM, and route, inspect and freeze it.

Every linear layer the experts adapt is replaced in place by a MixtureOfLoraLinear; the
resolved MoeConfig (experts, modules, base fingerprint) rides on the model as `moe_config`,
so saving needs nothing but the model. Saving, loading and the PEFT export live in
`checkpoint.py`; router initialisation from K-shot hidden states in `router_init.py`.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from taskexpert.bank import LoraAdapter
from taskexpert.errors import InputError, TaskexpertError
from taskexpert.moe.config import ExpertSpec, MoeConfig
from taskexpert.moe.layer import ForwardMask, MixtureOfLoraLinear
from taskexpert.tensor_sample import legacy_float_indices, spaced_indices

CONFIG_ATTR = "moe_config"
# The ForwardMask holding the attention mask of the model's last forward (router_stats and the
# load-balancing loss leave padding out with it), and the flag that its hook is installed.
MASK_ATTR = "_moe_attention_mask"
MASK_HOOK_ATTR = "_moe_mask_hook"
FINGERPRINT_SAMPLES = 4  # weight values sampled per adapted module to recognise the base
# A fresh shared expert's A is drawn from router_seed + this, so it does not repeat the draws
# of the routers (seeded by router_seed itself).
SHARED_SEED_OFFSET = 1_000_003
Experts = list[tuple[torch.Tensor, torch.Tensor, float]]
Shared = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (A_s, B_s)


def mixture_layers(model: nn.Module) -> dict[str, MixtureOfLoraLinear]:
    """The mixture layers of a model by module name (the base model's linear names)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MixtureOfLoraLinear)}


def mixture_config(model: nn.Module) -> MoeConfig:
    """The resolved config of an attached mixture."""
    config = getattr(model, CONFIG_ATTR, None)
    if not isinstance(config, MoeConfig) or not mixture_layers(model):
        raise TaskexpertError("the model has no mixture attached (use attach_mixture)")
    return config


def _base_linear(model: nn.Module, module: str, owner: str, path=None) -> nn.Linear:
    """The plain nn.Linear named `module`; errors name the expert/directory that asked for it."""
    try:
        layer = model.get_submodule(module)
    except AttributeError:
        raise InputError(f"{owner}: module {module} is not in the base model", path) from None
    if isinstance(layer, MixtureOfLoraLinear):
        raise InputError(f"{owner}: module {module} already has a mixture attached", path)
    if not isinstance(layer, nn.Linear):
        raise InputError(
            f"{owner}: module {module} is a {type(layer).__name__}, not a linear layer", path
        )
    return layer


def base_fingerprint(
    model: nn.Module, modules: Sequence[str], *, legacy: bool = False
) -> dict[str, list[float]]:
    """A few evenly spaced weight values per module: cheap, and tells bases of one shape apart.
    Positions are exact integers (tensor_sample); `legacy` reads them where versions before did."""
    prints = {}
    for module in modules:
        weight = model.get_submodule(module).weight.detach().reshape(-1)
        if legacy:
            index = legacy_float_indices(weight.numel(), FINGERPRINT_SAMPLES)
        else:
            index = spaced_indices(weight.numel(), FINGERPRINT_SAMPLES)
        prints[module] = [float(v) for v in weight[index.to(weight.device)].float().cpu()]
    return prints


def _close(current: list[float], recorded: list[float]) -> bool:
    return torch.allclose(torch.tensor(current), torch.tensor(recorded), rtol=1e-2, atol=1e-6)


def check_fingerprint(model: nn.Module, config: MoeConfig, path=None) -> None:
    """Refuse a base whose weights differ from the recorded ones (dtype rounding is tolerated).
    A checkpoint saved before the positions were exact integers matches at the old positions."""
    current = base_fingerprint(model, list(config.base_fingerprint))
    legacy = None
    for module, recorded in config.base_fingerprint.items():
        if not _close(current[module], recorded):
            if legacy is None:
                legacy = base_fingerprint(model, list(config.base_fingerprint), legacy=True)
            if _close(legacy[module], recorded):
                continue
            raise InputError(
                f"the mixture was built on another base model ({config.base_model_name or '?'}): "
                f"weights of {module} differ",
                path,
            )


def _most_common(values: dict[str, float]) -> float:
    return Counter(values.values()).most_common(1)[0][0]


def _expert_spec(adapter: LoraAdapter) -> ExpertSpec:
    """Rank and scaling as the usual value plus per-module exceptions, like PEFT's patterns."""
    ranks = {m: f.rank for m, f in adapter.modules.items()}
    scalings = {m: f.scaling for m, f in adapter.modules.items()}
    rank, scaling = int(_most_common(ranks)), _most_common(scalings)
    return ExpertSpec(
        name=adapter.name,
        source=str(adapter.path),
        rank=rank,
        scaling=scaling,
        rank_pattern={m: r for m, r in ranks.items() if r != rank},
        scaling_pattern={m: s for m, s in scalings.items() if s != scaling},
    )


def _check_adapters(model: nn.Module, adapters: Sequence[LoraAdapter]) -> list[str]:
    """All experts adapt the same modules, each exists in the base and the factors fit it."""
    if not adapters:
        raise InputError("a mixture needs at least one expert adapter")
    seen: dict[str, LoraAdapter] = {}
    for adapter in adapters:
        if adapter.name in seen:
            raise InputError(
                f"expert name {adapter.name!r} is used twice ({seen[adapter.name].path})",
                adapter.path,
            )
        seen[adapter.name] = adapter
    reference = adapters[0]
    modules = sorted(reference.modules)
    for adapter in adapters[1:]:
        missing = sorted(set(reference.modules) - set(adapter.modules))
        extra = sorted(set(adapter.modules) - set(reference.modules))
        if missing or extra:
            detail = f"lacks {missing[0]}" if missing else f"also adapts {extra[0]}"
            raise InputError(
                f"expert {adapter.name!r} targets different modules than {reference.name!r} "
                f"({detail}; {len(missing)} missing, {len(extra)} extra); all experts of a "
                "mixture must adapt the same modules",
                adapter.path,
            )
    for module in modules:
        linear = _base_linear(model, module, f"expert {reference.name!r}", reference.path)
        for adapter in adapters:
            factors = adapter.modules[module]
            if (
                factors.A.shape[1] != linear.in_features
                or factors.B.shape[0] != linear.out_features
            ):
                raise InputError(
                    f"expert {adapter.name!r}, module {module}: lora_A {tuple(factors.A.shape)} "
                    f"and lora_B {tuple(factors.B.shape)} do not fit the base layer "
                    f"({linear.in_features} -> {linear.out_features})",
                    adapter.path,
                )
    return modules


def _remember_attention_mask(model: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook: keep this forward's attention mask (None without one) for the stats
    and hand it to the mixture layers for their load-balancing loss.

    Hugging Face causal LMs take it as `attention_mask`, by keyword or second positionally.
    """
    mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
    # one shared holder, so no walk over the model's modules on every (decoding) forward
    getattr(model, MASK_ATTR).mask = mask.detach() if isinstance(mask, torch.Tensor) else None


def fresh_shared(model: nn.Module, config: MoeConfig, modules: Sequence[str]) -> Shared:
    """A new shared expert per module, initialised as PEFT initialises a LoRA: A kaiming-uniform
    (a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in))), B zero, so the mixture's output is unchanged
    until B trains. Seeded, like the routers, so attaching is reproducible."""
    generator = torch.Generator().manual_seed(config.router_seed + SHARED_SEED_OFFSET)
    rank, shared = config.shared_rank, {}
    for module in sorted(modules):
        linear = model.get_submodule(module)
        bound = 1.0 / math.sqrt(linear.in_features)
        A = torch.empty(rank, linear.in_features).uniform_(-bound, bound, generator=generator)
        shared[module] = (A, torch.zeros(linear.out_features, rank))
    return shared


def install_mixture(
    model: nn.Module,
    config: MoeConfig,
    experts: Mapping[str, Experts],
    shared: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> None:
    """Replace each named linear by a mixture of the given (A, B, scaling) experts; with
    config.shared_rank > 0 each also gets its shared expert's (A_s, B_s) from `shared`
    (fresh ones when None)."""
    if config.shared_rank > 0 and shared is None:
        shared = fresh_shared(model, config, list(experts))
    holder = getattr(model, MASK_ATTR, None)
    if not isinstance(holder, ForwardMask):
        holder = ForwardMask()
        setattr(model, MASK_ATTR, holder)
    holder.mask = None
    for module, factors in experts.items():
        base = model.get_submodule(module)
        mixture = MixtureOfLoraLinear(
            base,
            factors,
            top_k=config.top_k,
            load_balancing_coef=config.load_balancing_coef,
            expert_names=config.expert_names,
            shared=(*shared[module], config.shared_scaling) if config.shared_rank > 0 else None,
        )
        mixture.forward_mask = holder
        parent_name, _, child = module.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, mixture)
    setattr(model, CONFIG_ATTR, config)
    if not getattr(model, MASK_HOOK_ATTR, False):
        model.register_forward_pre_hook(_remember_attention_mask, with_kwargs=True)
        setattr(model, MASK_HOOK_ATTR, True)


def init_fresh_routers(model: nn.Module) -> None:
    """Small seeded normal router weights, so ties do not send every token to the same experts."""
    config = mixture_config(model)
    generator = torch.Generator().manual_seed(config.router_seed)
    with torch.no_grad():
        for _, layer in sorted(mixture_layers(model).items()):
            weight = layer.router.weight
            noise = torch.randn(weight.shape, generator=generator) * config.router_init_std
            weight.copy_(noise.to(weight.dtype))
    config.router_init = "fresh"


def attach_mixture(
    model: nn.Module,
    adapters: Sequence[LoraAdapter],
    config: MoeConfig | None = None,
    freeze: bool = True,
) -> nn.Module:
    """Turn every linear the experts adapt into a mixture of them, with fresh routers (and a
    fresh shared expert when config.shared_rank > 0).

    `config` carries the routing choices (top_k, load balancing, router seed, shared expert);
    the experts, modules and base fingerprint are filled in here. The base is frozen unless
    freeze=False.
    """
    choices = (config or MoeConfig()).model_dump(
        exclude={"experts", "modules", "target_modules", "base_model_name", "base_fingerprint"}
    )
    modules = _check_adapters(model, adapters)
    if choices["top_k"] > len(adapters):
        raise InputError(
            f"top_k={choices['top_k']} but only {len(adapters)} experts", field="top_k"
        )
    base_name = getattr(model, "name_or_path", None) or adapters[0].base_model_name
    if choices["shared_rank"] == 0:  # no shared expert: an alpha for it means nothing
        choices["shared_alpha"] = None
    elif choices["shared_alpha"] is None:  # recorded as used
        choices["shared_alpha"] = 2.0 * choices["shared_rank"]
    resolved = MoeConfig(
        **choices,
        experts=[_expert_spec(a) for a in adapters],
        target_modules=sorted({m.rsplit(".", 1)[-1] for m in modules}),
        modules=modules,
        base_model_name=str(base_name) if base_name else None,
        base_fingerprint=base_fingerprint(model, modules),
    )
    experts = {
        module: [
            (a.modules[module].A, a.modules[module].B, a.modules[module].scaling) for a in adapters
        ]
        for module in modules
    }
    install_mixture(model, resolved, experts)
    init_fresh_routers(model)
    if freeze:
        freeze_base(model)
    return model


def freeze_base(model: nn.Module) -> int:
    """Only experts, routers and shared experts train; returns the number of trainable
    parameters."""
    trainable = set()
    for layer in mixture_layers(model).values():
        for name, param in layer.named_parameters():
            if not name.startswith("base_layer."):
                trainable.add(id(param))
    count = 0
    for param in model.parameters():
        param.requires_grad_(id(param) in trainable)
        count += param.numel() if id(param) in trainable else 0
    return count


def mixture_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """Sum of the layers' load-balancing losses from the last forward; None when it is off."""
    losses = [
        layer.last_aux_loss
        for layer in mixture_layers(model).values()
        if layer.last_aux_loss is not None
    ]
    return torch.stack(losses).sum() if losses else None


def router_stats(model: nn.Module) -> dict:
    """Mean router entropy and per-expert load over layers, from the last routed forward.

    Load is the share of (token, slot) dispatches an expert received; uniform is 1/N. Only
    real tokens count: padding is what the attention mask of the model's last forward marks
    0 (a hook remembers it). Without a mask, or when it does not fit, every token counts;
    `tokens` says how many were counted per layer, `padding_excluded` whether a mask was used.
    """
    config = mixture_config(model)
    holder = getattr(model, MASK_ATTR, None)
    attention_mask = holder.mask if isinstance(holder, ForwardMask) else None
    per_layer, masked = [], attention_mask is not None
    for layer in mixture_layers(model).values():
        keep = layer.token_mask(attention_mask) if attention_mask is not None else None
        masked = masked and keep is not None
        stats = layer.routing_stats(keep)
        if stats is not None:
            per_layer.append(stats)
    if not per_layer:
        return {
            "entropy": None,
            "max_entropy": None,
            "load": {},
            "layers": 0,
            "tokens": 0,
            "padding_excluded": False,
        }
    entropy = torch.stack([s.entropy for s in per_layer]).mean()
    load = torch.stack([s.load for s in per_layer]).mean(dim=0)
    return {
        "entropy": float(entropy),
        "max_entropy": float(torch.log(torch.tensor(float(len(config.experts))))),
        "load": {name: float(v) for name, v in zip(config.expert_names, load)},
        "layers": len(per_layer),
        "tokens": per_layer[0].tokens,
        "padding_excluded": masked,
    }


def resolve_gates(
    model: nn.Module, gates: str | Sequence[float] | Mapping[str, float]
) -> list[float]:
    """'uniform', one weight per expert in order, or {expert name: weight} (others get 0)."""
    names = mixture_config(model).expert_names
    if isinstance(gates, str):
        if gates != "uniform":
            raise InputError(f"unknown gates {gates!r} (use 'uniform' or weights)", field="gates")
        return [1.0 / len(names)] * len(names)
    if isinstance(gates, Mapping):
        unknown = sorted(set(gates) - set(names))
        if unknown:
            raise InputError(f"no expert named {unknown[0]!r} (experts: {names})", field="gates")
        return [float(gates.get(name, 0.0)) for name in names]
    values = [float(g) for g in gates]
    if len(values) != len(names):
        raise InputError(f"{len(values)} gates for {len(names)} experts", field="gates")
    return values


@contextlib.contextmanager
def fixed_gates(
    model: nn.Module, gates: str | Sequence[float] | Mapping[str, float] = "uniform"
) -> Iterator[nn.Module]:
    """Bypass the routers: every token gets the same expert weights (experts at 0 do not run)."""
    values = resolve_gates(model, gates)
    layers = mixture_layers(model).values()
    for layer in layers:
        layer.fixed_gates = torch.tensor(values, dtype=torch.float32)
    try:
        yield model
    finally:
        for layer in layers:
            layer.fixed_gates = None


def only_expert(model: nn.Module, name: str) -> contextlib.AbstractContextManager:
    """The base plus one expert at gate 1: that expert's plain LoRA."""
    return fixed_gates(model, {name: 1.0})
