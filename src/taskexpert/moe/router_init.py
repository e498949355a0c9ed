"""Routers that start from K-shot hidden states per expert, instead of from noise.

Recipe (docs/design.md Stage 3, "routers start ... from K-shot hidden states per expert"):
1. Give each expert its examples. From a plain K-shot set, each record goes to the expert
   that fits it best (lowest response NLL with that expert alone), so the partition says
   which expert the target's examples resemble.
2. Run expert e's examples through the model with expert e alone and average, per adapted
   layer, the layer input over their non-padding tokens: mu_e.
3. Router row e = temperature * normalise(P (mu_e - c)) / (mean token norm), c = mean_f mu_f
   and P the projection orthogonal to c. Centring and projecting remove what every hidden
   state shares: the router has no bias, so a row with a component along c would give each
   expert a constant offset larger than the differences between experts. Dividing by the
   token norm keeps logits within +-temperature whatever the hidden size. Experts without
   examples get a zero row (logit 0); if only one expert has examples its row is its mean
   direction. It is a heuristic start; training moves the routers from there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from taskexpert.errors import InputError
from taskexpert.lm import (
    EncodedPair,
    batches_by_length,
    collate,
    encode_pair,
    ensure_pad_token,
    mean_nll,
    model_device,
)
from taskexpert.moe.model import mixture_config, mixture_layers, only_expert
from taskexpert.progress import progress as progress_bar
from taskexpert.prompts import format_prompt
from taskexpert.records import Record

Example = Record | str


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def assign_records_to_experts(
    model: nn.Module,
    tokenizer,
    records: Sequence[Record],
    batch_size: int = 8,
    max_length: int = 512,
) -> dict[str, list[Record]]:
    """Each record to the expert with the lowest mean response NLL on it (ties: first expert)."""
    if not records:
        raise InputError("no K-shot records to initialise the routers from")
    names = mixture_config(model).expert_names
    prompts = [format_prompt(r, tokenizer) for r in records]
    targets = [r.output for r in records]
    losses = []
    with _eval_mode(model):
        for name in progress_bar(names, desc="K-shot NLL per expert", unit="expert"):
            with only_expert(model, name):
                losses.append(mean_nll(model, tokenizer, prompts, targets, batch_size, max_length))
    best = torch.tensor(losses).argmin(dim=0).tolist()
    return {name: [r for r, b in zip(records, best) if b == e] for e, name in enumerate(names)}


def _encode(tokenizer, example: Example, max_length: int) -> EncodedPair:
    if isinstance(example, Record):
        return encode_pair(tokenizer, format_prompt(example, tokenizer), example.output, max_length)
    ids = tokenizer(example, add_special_tokens=True)["input_ids"][:max_length]
    return EncodedPair(ids, ids)


@torch.no_grad()
def expert_mean_inputs(
    model: nn.Module,
    tokenizer,
    examples: Mapping[str, Sequence[Example]],
    batch_size: int = 8,
    max_length: int = 512,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Per module: mean layer input [N, in] (NaN rows for experts without examples), token norm."""
    names = mixture_config(model).expert_names
    unknown = sorted(set(examples) - set(names))
    if unknown:
        raise InputError(f"no expert named {unknown[0]!r} (experts: {names})")
    layers = mixture_layers(model)
    pad_id = ensure_pad_token(tokenizer)
    device = model_device(model)
    sums = {m: torch.zeros(len(names), x.base_layer.in_features) for m, x in layers.items()}
    norms = dict.fromkeys(layers, 0.0)
    tokens = torch.zeros(len(names))
    current: dict = {}

    def recorder(module: str):
        def hook(_layer, args):
            x = args[0][current["mask"]].double()
            sums[module][current["expert"]] += x.sum(dim=0).float().cpu()
            norms[module] += float(x.norm(dim=-1).sum())

        return hook

    handles = [layer.register_forward_pre_hook(recorder(m)) for m, layer in layers.items()]
    try:
        with _eval_mode(model):
            steps = progress_bar(names, desc="K-shot hidden states", unit="expert")
            for e, name in enumerate(steps):
                pairs = [_encode(tokenizer, ex, max_length) for ex in examples.get(name, [])]
                with only_expert(model, name):
                    for idx in batches_by_length([len(p.input_ids) for p in pairs], batch_size):
                        batch = collate([pairs[i] for i in idx], pad_id)
                        current.update(expert=e, mask=batch["attention_mask"].bool().to(device))
                        model(
                            input_ids=batch["input_ids"].to(device),
                            attention_mask=batch["attention_mask"].to(device),
                        )
                        tokens[e] += int(batch["attention_mask"].sum())
    finally:
        for handle in handles:
            handle.remove()
    means = {m: s / tokens.unsqueeze(1) for m, s in sums.items()}  # 0/0 -> NaN: no examples
    total = max(float(tokens.sum()), 1.0)
    return means, {m: n / total for m, n in norms.items()}


@torch.no_grad()
def set_routers_from_means(
    model: nn.Module,
    means: Mapping[str, torch.Tensor],
    temperature: float,
    token_norms: Mapping[str, float] | None = None,
) -> None:
    """Router rows from per-expert mean inputs (see the module docstring for the formula)."""
    for module, layer in mixture_layers(model).items():
        if module not in means:
            raise InputError(f"no mean hidden states for module {module}")
        mu = means[module].float().cpu()
        if mu.shape != layer.router.weight.shape:
            raise InputError(
                f"mean hidden states of {module} have shape {tuple(mu.shape)}, expected "
                f"{tuple(layer.router.weight.shape)} (experts x layer input)"
            )
        has = torch.isfinite(mu).all(dim=1)
        if not has.any():
            raise InputError("K-shot router initialisation got no examples for any expert")
        # With a single expert holding examples there is nothing to centre against.
        centre = mu[has].mean(dim=0) if int(has.sum()) > 1 else torch.zeros_like(mu[0])
        rows = torch.where(has.unsqueeze(1), mu - centre, torch.zeros_like(mu))
        if centre.norm() > 0:
            # The router has no bias: rows must not see the shared centre, or its per-expert
            # projection would act as one and outweigh the differences between experts.
            direction = centre / centre.norm()
            rows = rows - (rows @ direction).unsqueeze(1) * direction
        norm = (token_norms or {}).get(module) or float(mu[has].norm(dim=1).mean())
        rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
        layer.router.weight.copy_((rows * (temperature / max(norm, 1e-12))).to(layer.router.weight))


def init_routers_from_kshot(
    model: nn.Module,
    tokenizer,
    examples: Sequence[Record] | Mapping[str, Sequence[Example]] | Mapping[str, torch.Tensor],
    temperature: float | None = None,
    batch_size: int = 8,
    max_length: int = 512,
) -> dict[str, int]:
    """Set every router from K-shot hidden states; returns the examples used per expert.

    `examples` is the K-shot list (split among experts by NLL), or {expert: its examples},
    or precomputed {module: [N, in] mean layer inputs}. Temperature defaults to the config's.
    """
    config = mixture_config(model)
    temperature = temperature or config.kshot_temperature
    if (
        isinstance(examples, Mapping)
        and examples
        and all(isinstance(v, torch.Tensor) for v in examples.values())
    ):
        set_routers_from_means(model, examples, temperature)
        counts = {}
    else:
        if not isinstance(examples, Mapping):
            examples = assign_records_to_experts(
                model, tokenizer, list(examples), batch_size, max_length
            )
        means, token_norms = expert_mean_inputs(model, tokenizer, examples, batch_size, max_length)
        set_routers_from_means(model, means, temperature, token_norms)
        counts = {name: len(examples.get(name, [])) for name in config.expert_names}
    config.router_init = "kshot"
    config.kshot_temperature = temperature
    return counts
