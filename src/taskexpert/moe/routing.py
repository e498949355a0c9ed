"""Routing diagnostics: how a trained mixture spreads its tokens over experts, per layer.

Why: a mixture whose routers send nearly every token to one expert in most layers is a single
LoRA paying a router's cost (and its variance); the user should be told, and can fold it into
one plain PEFT LoRA (`taskexpert export RUN_DIR --merge`, moe/fold.py).

What is measured, over the real (attention-mask 1) tokens of teacher-forced forwards of
prompt + reference answer, streaming over batches with O(layers x experts) memory:
- `usage[layer][e]`: the mean gate weight of expert e, i.e. its share of the layer's routing
  mass (the renormalised top-k gate, 0 where e was not chosen). Rows sum to 1. Under top-1 it
  is the share of tokens routed to e; under top-k > 1 a token-count share could never pass 1/k,
  so the mass share is what can say "one expert took over".
- `selected[layer][e]`: the share of tokens that had e among their top k (rows sum to k).
- `entropy[layer]`: entropy of the usage row in nats (max ln N): 0 when one expert takes all.
- `dominant_share[layer]`: the largest usage of the layer; `collapsed` when it exceeds
  COLLAPSE_SHARE (0.9) in more than half of the layers.
Layers are the mixture layers (one per adapted linear module), named as in the base model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from taskexpert.errors import InputError
from taskexpert.lm import batches_by_length, collate, encode_pair, ensure_pad_token, model_device
from taskexpert.moe.layer import MixtureOfLoraLinear
from taskexpert.moe.model import mixture_config, mixture_layers
from taskexpert.prompts import format_prompt
from taskexpert.records import Record

COLLAPSE_SHARE = 0.9  # one expert above this share of a layer's routing mass ...
COLLAPSE_LAYERS = 0.5  # ... in more than this fraction of the layers: collapsed


@dataclass
class RoutingReport:
    """Per layer and expert routing over the counted tokens (see the module docstring)."""

    experts: list[str]
    layers: list[str]
    usage: list[list[float]]
    selected: list[list[float]]
    tokens: int
    top_k: int

    @property
    def max_entropy(self) -> float:
        return math.log(len(self.experts))

    @property
    def entropy(self) -> list[float]:
        return [sum(-p * math.log(p) for p in row if p > 0) for row in self.usage]

    @property
    def dominant_share(self) -> list[float]:
        return [max(row) for row in self.usage]

    @property
    def dominant(self) -> list[str]:
        return [self.experts[row.index(max(row))] for row in self.usage]

    @property
    def collapsed_layers(self) -> int:
        return sum(share > COLLAPSE_SHARE for share in self.dominant_share)

    @property
    def collapsed(self) -> bool:
        return self.collapsed_layers > COLLAPSE_LAYERS * len(self.layers)

    @property
    def warning(self) -> str | None:
        if not self.collapsed:
            return None
        names = sorted(set(self.dominant), key=self.dominant.count, reverse=True)
        return (
            f"routing collapsed: one expert takes over {COLLAPSE_SHARE:.0%} of the routing mass "
            f"in {self.collapsed_layers} of {len(self.layers)} layers (mostly "
            f"{names[0]!r}); the mixture acts as one LoRA, so `taskexpert export RUN_DIR "
            "--merge` folds it into a single PEFT LoRA with the same outputs up to the "
            "measured difference"
        )

    def to_json(self) -> dict:
        """routing.json, the exact shape the run's report reads."""
        return {
            "experts": list(self.experts),
            "layers": list(self.layers),
            "usage": [list(row) for row in self.usage],
            "entropy": self.entropy,
            "max_entropy": self.max_entropy,
            "collapsed": self.collapsed,
            "dominant_share": self.dominant_share,
            "warning": self.warning,
            "tokens": self.tokens,
        }

    @classmethod
    def from_json(cls, data: dict, path=None) -> RoutingReport:
        """Read routing.json back (its `selected` and `top_k` are not stored: left empty/0)."""
        try:
            experts, layers, usage = data["experts"], data["layers"], data["usage"]
            tokens = int(data["tokens"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not a routing report: {exc}", path) from None
        if len(usage) != len(layers) or any(len(row) != len(experts) for row in usage):
            raise InputError("usage must have one row per layer and one value per expert", path)
        return cls(list(experts), list(layers), [list(map(float, r)) for r in usage], [], tokens, 0)


class RoutingRecorder:
    """Forward hooks on every mixture layer that add up its gates over the kept tokens.

    Use as a context manager around forwards; set `keep` ([batch, length] bool) before each
    one. A layer under fixed gates (moe.model.fixed_gates) counts those gates for every token.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = mixture_layers(model)
        if not self.layers:
            raise InputError("the model has no mixture attached: no routing to record")
        config = mixture_config(model)
        self.experts = config.expert_names
        self.top_k = config.top_k
        n = len(self.experts)
        self.gate_sums = {name: torch.zeros(n, dtype=torch.float64) for name in self.layers}
        self.selected = {name: torch.zeros(n, dtype=torch.float64) for name in self.layers}
        self.counted = dict.fromkeys(self.layers, 0)
        self.keep: torch.Tensor | None = None
        self._handles: list = []

    def __enter__(self) -> RoutingRecorder:
        for name, layer in self.layers.items():
            self._handles.append(layer.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def hook(layer: MixtureOfLoraLinear, args, output) -> None:
            keep = None if self.keep is None else layer.token_mask(self.keep)
            if layer.fixed_gates is not None:
                tokens = int(keep.sum()) if keep is not None else output[..., 0].numel()
                gates = layer.fixed_gates.double().cpu()
                self.gate_sums[name] += gates * tokens
                self.selected[name] += (gates != 0).double() * tokens
                self.counted[name] += tokens
                return
            routed = layer.last_gates(keep)
            if routed is None:
                return
            gates, chosen = routed
            flat = chosen.reshape(-1).cpu()
            self.gate_sums[name].index_add_(0, flat, gates.reshape(-1).double().cpu())
            self.selected[name] += torch.bincount(flat, minlength=len(self.experts)).double()
            self.counted[name] += int(chosen.shape[0])

        return hook

    def report(self) -> RoutingReport:
        names = [n for n in self.layers if self.counted[n] > 0]
        if not names:
            raise InputError("no token was routed: nothing to report")
        return RoutingReport(
            experts=list(self.experts),
            layers=names,
            usage=[(self.gate_sums[n] / self.counted[n]).tolist() for n in names],
            selected=[(self.selected[n] / self.counted[n]).tolist() for n in names],
            tokens=self.counted[names[0]],
            top_k=self.top_k,
        )


@torch.no_grad()
def measure_routing(
    model: nn.Module,
    tokenizer,
    records: Sequence[Record],
    batch_size: int = 16,
    max_length: int = 512,
) -> RoutingReport:
    """Routing of `model` over the records' prompt + reference output (teacher forced, as
    training sees them), padding left out by the attention mask."""
    if not records:
        raise InputError("no records to measure routing on")
    pad_id = ensure_pad_token(tokenizer)
    device = model_device(model)
    pairs = [
        encode_pair(tokenizer, format_prompt(r, tokenizer), r.output, max_length) for r in records
    ]
    was_training = model.training
    model.eval()
    try:
        with RoutingRecorder(model) as recorder:
            for idx in batches_by_length([len(p.input_ids) for p in pairs], batch_size):
                batch = collate([pairs[i] for i in idx], pad_id)
                mask = batch["attention_mask"].to(device)
                recorder.keep = mask.bool()
                model(input_ids=batch["input_ids"].to(device), attention_mask=mask)
    finally:
        model.train(was_training)
    return recorder.report()
