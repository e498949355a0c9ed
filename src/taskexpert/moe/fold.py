"""Fold a trained mixture into one plain PEFT LoRA, for mixtures whose routing collapsed.

Why: when the routers send (nearly) every token to the same expert, the mixture is one LoRA
with extra cost; a plain PEFT adapter loads anywhere (`PeftModel.from_pretrained`), merges
into the base and serves with any LoRA server.

The construction. Each adapted module of the mixture adds sum_e g_e(x) s_e B_e A_e x. The fold
replaces the per-token gates g_e(x) by constants c_e per module, so the added term is
dW x with dW = sum_e c_e s_e B_e A_e. dW is represented EXACTLY as one LoRA of rank sum_e r_e
(over the experts with c_e != 0): A' = [A_1; A_2; ...] (rows stacked) and
B' = [c_1 s_1 B_1 | c_2 s_2 B_2 | ...] (columns concatenated), with lora_alpha = rank, so
PEFT's scaling is 1 and B'A' = dW. The fold itself therefore loses nothing; all difference
from the mixture comes from replacing routing by constants.

The constants (`gates_from_routing`): c_e = the expert's measured usage in that layer (its
mean gate weight over the evaluation tokens, moe/routing.py), experts below `min_share`
dropped and the rest renormalised to sum 1 (the mixture's gates always sum to 1). Under a
collapsed top-1 mixture that is the dominant expert at weight 1, and exact wherever the router
always picks it; where routing is constant per module (forced, or top_k = N with equal gates)
it is exact too.

A shared expert (MoeConfig.shared_rank > 0) is one more always-on term, s_s B_s A_s x at gate
1 for every token, so it folds exactly: its A_s is one more block of A' and s_s B_s one more
block of B' (rank sum_e r_e + r_s), whatever the constants.

The mixture holds nothing else that trains: MixtureOfLoraLinear has the frozen base layer,
the experts, the router and the shared expert (no bias), and `check_foldable` refuses a model
with any other trainable parameter, which the fold would otherwise silently drop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from taskexpert.errors import InputError, TaskexpertError
from taskexpert.moe.checkpoint import PEFT_WEIGHTS_FILE
from taskexpert.moe.model import mixture_config, mixture_layers
from taskexpert.moe.routing import RoutingReport
from taskexpert.peft_glue import peft_weight_key


def check_foldable(model: nn.Module) -> None:
    """Refuse a model with trainable parameters outside the experts, routers and shared
    experts (the parameters `stacked_lora` folds, and the routers it replaces by constants)."""
    layers = mixture_layers(model)
    owned = {
        id(p)
        for layer in layers.values()
        for name, p in layer.named_parameters()
        if not name.startswith("base_layer.")
    }
    extra = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in owned]
    if extra:
        raise TaskexpertError(
            f"the mixture has trainable parameters besides its experts, routers and shared "
            f"experts "
            f"({extra[0]} and {len(extra) - 1} more); a LoRA fold would drop them, so it is "
            "refused"
        )


def gates_from_routing(
    report: RoutingReport, model: nn.Module, min_share: float = 0.05
) -> dict[str, list[float]]:
    """Per module: the measured usage, experts under `min_share` dropped, renormalised."""
    names = mixture_config(model).expert_names
    if report.experts != names:
        raise InputError(
            f"the routing report's experts {report.experts} are not the mixture's {names}"
        )
    missing = sorted(set(mixture_layers(model)) - set(report.layers))
    if missing:
        raise InputError(f"the routing report has no row for layer {missing[0]}")
    gates = {}
    for layer, row in zip(report.layers, report.usage):
        kept = [u if u >= min_share else 0.0 for u in row]
        if sum(kept) <= 0:  # every expert under the threshold: keep the largest
            kept = [u if u == max(row) else 0.0 for u in row]
        total = sum(kept)
        gates[layer] = [u / total for u in kept]
    return gates


def stacked_lora(
    model: nn.Module, gates: Mapping[str, Sequence[float]]
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """PEFT factor tensors of dW = sum_e c_e s_e B_e A_e (+ s_s B_s A_s, the shared expert at
    gate 1, where there is one) per module, and each module's rank."""
    tensors, ranks = {}, {}
    for module, layer in mixture_layers(model).items():
        values = [float(v) for v in gates[module]]
        if len(values) != layer.num_experts:
            raise InputError(f"{len(values)} gates for {layer.num_experts} experts", field=module)
        kept = [e for e, g in enumerate(values) if g != 0.0]
        if not kept and layer.shared is None:
            raise InputError("all gates are zero; the export would be the base model", field=module)
        blocks = [(layer.lora_A[e], layer.lora_B[e], values[e] * layer.scaling[e]) for e in kept]
        if layer.shared is not None:
            blocks.append((layer.shared.lora_A, layer.shared.lora_B, layer.shared.scaling))
        A = torch.cat([a.detach().float() for a, _, _ in blocks], dim=0)
        B = torch.cat([b.detach().float() * factor for _, b, factor in blocks], dim=1)
        dtype = layer.lora_A[0].dtype
        tensors[peft_weight_key(module, "A")] = A.to(dtype).cpu().contiguous()
        tensors[peft_weight_key(module, "B")] = B.to(dtype).cpu().contiguous()
        ranks[module] = A.shape[0]
    return tensors, ranks


def write_stacked_lora(
    model: nn.Module, gates: Mapping[str, Sequence[float]], directory: str | Path
) -> dict[str, int]:
    """Write the PEFT adapter (config + safetensors) into an existing `directory`; the ranks.

    The base model's name is the one the mixture recorded, so taskexpert's base check and
    PEFT accept it on the mixture's base."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    check_foldable(model)
    tensors, ranks = stacked_lora(model, gates)
    rank = max(set(ranks.values()), key=list(ranks.values()).count)
    pattern = {m: r for m, r in ranks.items() if r != rank}
    peft_config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        target_modules=sorted(ranks),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=mixture_config(model).base_model_name,
    )
    peft_config.save_pretrained(str(directory))
    save_file(tensors, str(Path(directory) / PEFT_WEIGHTS_FILE), metadata={"format": "pt"})
    return ranks


@torch.no_grad()
def logit_difference(
    mixture: nn.Module, folded: nn.Module, batches: Sequence[dict[str, torch.Tensor]]
) -> dict[str, float | int]:
    """Max and mean |logit difference| between two models over the real tokens of `batches`
    (dicts with input_ids and attention_mask): how much the fold changed the outputs."""
    from taskexpert.lm import model_device

    largest, total, count = 0.0, 0.0, 0
    for batch in batches:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        outputs = []
        for model in (mixture, folded):
            device = model_device(model)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            outputs.append(logits.float().cpu())
        diff = (outputs[0] - outputs[1]).abs()[mask.bool().cpu()]
        largest = max(largest, float(diff.max())) if diff.numel() else largest
        total += float(diff.sum())
        count += diff.numel()
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    return {"max_abs": largest, "mean_abs": total / max(count, 1), "tokens": tokens}
