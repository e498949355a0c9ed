"""Mixture of LoRA experts: config, layer, attach/save/load (docs/design.md Stage 3).

model = attach_mixture(base, [load_adapter(p) for p in paths], MoeConfig(top_k=2))
init_routers_from_kshot(model, tokenizer, kshot_records)    # optional, else fresh routers
... train experts + routers (aux loss: mixture_aux_loss(model), logs: router_stats(model))
save_mixture(model, "moe/");  model = load_mixture(fresh_base, "moe/")
"""

from taskexpert.moe.checkpoint import (
    WEIGHTS_FILE,
    export_merged_lora,
    load_mixture,
    mixture_state,
    save_mixture,
)
from taskexpert.moe.config import CONFIG_FILE, ExpertSpec, MoeConfig
from taskexpert.moe.layer import MixtureOfLoraLinear
from taskexpert.moe.model import (
    attach_mixture,
    fixed_gates,
    freeze_base,
    mixture_aux_loss,
    mixture_config,
    mixture_layers,
    only_expert,
    router_stats,
)
from taskexpert.moe.router_init import (
    assign_records_to_experts,
    expert_mean_inputs,
    init_routers_from_kshot,
    set_routers_from_means,
)

load = load_mixture  # issue 5: taskexpert.moe.load(base, path)
save = save_mixture

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "ExpertSpec",
    "MixtureOfLoraLinear",
    "MoeConfig",
    "assign_records_to_experts",
    "attach_mixture",
    "expert_mean_inputs",
    "export_merged_lora",
    "fixed_gates",
    "freeze_base",
    "init_routers_from_kshot",
    "load",
    "load_mixture",
    "mixture_aux_loss",
    "mixture_config",
    "mixture_layers",
    "mixture_state",
    "only_expert",
    "router_stats",
    "save",
    "save_mixture",
    "set_routers_from_means",
]
