"""A frozen nn.Linear plus N LoRA experts behind a per-token top-k router (docs/design.md Stage 3).

y = W0 x + sum over the k chosen experts of p_e * s_e * B_e A_e x, where p = softmax(W_g x)
restricted to the top k and renormalised, and s_e is each expert's own alpha/r (the reference
code forgot it). When N > k every expert runs only on the tokens routed to it (a sort, a
gather and an index_add), so the cost grows with k, not with N.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# The routers' weight names in a model with mixtures attached: `<module>.router.weight`.
ROUTER_PARAMETER_PATTERN = r"(^|\.)router\.weight$"


class RoutingStats(NamedTuple):
    """One layer's routing over the counted tokens of its last forward."""

    entropy: torch.Tensor  # mean entropy of the router distribution
    load: torch.Tensor  # [N] share of (token, slot) dispatches per expert; uniform is 1/N
    tokens: int  # tokens counted


class ForwardMask:
    """The attention mask of a model's current forward, one object shared by its layers."""

    __slots__ = ("mask",)

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None


class MixtureOfLoraLinear(nn.Module):
    """Wraps a frozen linear layer; experts may have different ranks, each keeps its scaling."""

    def __init__(
        self,
        base_layer: nn.Linear,
        experts: Sequence[tuple[torch.Tensor, torch.Tensor, float]],
        top_k: int = 2,
        load_balancing_coef: float = 0.0,
        expert_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not experts:
            raise ValueError("a mixture needs at least one expert")
        if not 1 <= top_k <= len(experts):
            raise ValueError(f"top_k={top_k} must be between 1 and the {len(experts)} experts")
        self.base_layer = base_layer
        weight = base_layer.weight
        # Like PEFT's autocast_adapter_dtype: half-precision bases get float32 experts and router.
        dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        factory = {"dtype": dtype, "device": weight.device}
        self.lora_A = nn.ParameterList()
        self.lora_B = nn.ParameterList()
        self.scaling: list[float] = []
        for i, (A, B, scaling) in enumerate(experts):
            if A.shape[1] != base_layer.in_features or B.shape[0] != base_layer.out_features:
                raise ValueError(
                    f"expert {i}: lora_A {tuple(A.shape)} / lora_B {tuple(B.shape)} do not fit "
                    f"a linear layer {base_layer.in_features} -> {base_layer.out_features}"
                )
            self.lora_A.append(nn.Parameter(A.detach().to(**factory).clone()))
            self.lora_B.append(nn.Parameter(B.detach().to(**factory).clone()))
            self.scaling.append(float(scaling))
        # The scalings as a tensor, for the sparse path (not saved: the config holds them).
        self.register_buffer(
            "scaling_vector", torch.tensor(self.scaling, device=weight.device), persistent=False
        )
        self.router = nn.Linear(base_layer.in_features, len(experts), bias=False, **factory)
        nn.init.zeros_(self.router.weight)
        self.top_k = top_k
        self.load_balancing_coef = load_balancing_coef
        self.expert_names = list(expert_names or [str(i) for i in range(len(experts))])
        # Fixed gates (shape [N]) replace the router: forced routing, or the merge's reference.
        self.fixed_gates: torch.Tensor | None = None
        # The last routed forward: router probabilities [T, N], chosen experts [T, k] and the
        # input's leading shape (detached, so statistics cost nothing until asked for), and
        # the load-balancing loss (with grad).
        self._last_probs: torch.Tensor | None = None
        self._last_chosen: torch.Tensor | None = None
        self._last_shape: tuple[int, ...] = ()
        self.last_aux_loss: torch.Tensor | None = None
        # The [batch, length] attention mask of the model's current forward, shared by every
        # mixture layer of a model and set once per forward by its pre-hook (moe/model.py):
        # the load-balancing loss leaves padding out with it.
        self.forward_mask = ForwardMask()

    @property
    def num_experts(self) -> int:
        return len(self.lora_A)

    @property
    def last_load(self) -> torch.Tensor | None:
        """Share of the last forward's (token, slot) dispatches per expert; uniform is 1/N."""
        stats = self.routing_stats()
        return None if stats is None else stats.load

    @property
    def last_entropy(self) -> torch.Tensor | None:
        """Mean entropy of the router distribution over the last forward's tokens."""
        stats = self.routing_stats()
        return None if stats is None else stats.entropy

    def token_mask(self, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """The [batch, length] attention mask as one bool per token of the last forward, or
        None when it does not fit; when decoding with a cache it also covers past tokens,
        so its last columns are the ones routed."""
        lead = self._last_shape
        mask = attention_mask
        if mask.dim() == len(lead) == 2 and mask.shape[0] == lead[0] and mask.shape[1] > lead[1]:
            mask = mask[:, mask.shape[1] - lead[1] :]
        if tuple(mask.shape) != lead:
            return None
        return mask.reshape(-1).to(device=self.router.weight.device, dtype=torch.bool)

    def routing_stats(self, token_mask: torch.Tensor | None = None) -> RoutingStats | None:
        """Entropy and load of the last routed forward over the tokens `token_mask` [T] keeps
        (all when None, e.g. padding included); None when no token was routed."""
        if self._last_probs is None or self._last_chosen is None:
            return None
        probs, chosen = self._last_probs, self._last_chosen
        if token_mask is not None:
            probs, chosen = probs[token_mask], chosen[token_mask]
        if probs.shape[0] == 0:
            return None
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1).mean()
        counts = torch.bincount(chosen.reshape(-1), minlength=self.num_experts).float()
        return RoutingStats(entropy, counts / counts.sum(), probs.shape[0])

    def last_gates(
        self, token_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Renormalised top-k gates [T, k] and chosen experts [T, k] of the last routed forward
        over the tokens `token_mask` [T] keeps (all when None); None when none was routed."""
        if self._last_probs is None or self._last_chosen is None:
            return None
        probs, chosen = self._last_probs, self._last_chosen
        if token_mask is not None:
            probs, chosen = probs[token_mask], chosen[token_mask]
        top = probs.gather(1, chosen)
        return top / top.sum(dim=1, keepdim=True), chosen

    def expert_delta(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """s_e * B_e A_e x, computed as PEFT does (so one expert at gate 1 equals its LoRA)."""
        return F.linear(F.linear(x, self.lora_A[e]), self.lora_B[e]) * self.scaling[e]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        flat = x.reshape(-1, x.shape[-1]).to(self.router.weight.dtype)
        self._last_shape = tuple(x.shape[:-1])
        if self.fixed_gates is not None:
            self._last_probs = self._last_chosen = self.last_aux_loss = None
            delta = self._fixed_mix(flat, self.fixed_gates)
        else:
            gates, chosen, counts = self._route(flat)
            if self.top_k < self.num_experts:
                return self._sparse_mix(flat, gates, chosen, counts, result)
            dense = gates.new_zeros(flat.shape[0], self.num_experts).scatter(1, chosen, gates)
            delta = self._dense_mix(flat, dense)
        return result + delta.reshape(result.shape).to(result.dtype)

    def _route(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Renormalised top-k gates [T, k], expert indices [T, k] and dispatches per expert."""
        probs = F.linear(flat, self.router.weight).float().softmax(dim=-1)
        top_p, chosen = probs.topk(self.top_k, dim=-1)
        gates = top_p / top_p.sum(dim=-1, keepdim=True)
        counts = torch.bincount(chosen.reshape(-1), minlength=self.num_experts)
        self._last_probs, self._last_chosen = probs.detach(), chosen.detach()
        self.last_aux_loss = None
        if self.load_balancing_coef > 0:
            self.last_aux_loss = self._balancing_loss(probs, chosen)
        return gates.to(flat.dtype), chosen, counts

    def _balancing_loss(self, probs: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor | None:
        """Switch Transformer: N * sum_e (share of dispatches to e) * (mean router prob of e),
        over real tokens only: padding would pull the balance toward whatever it routes to."""
        mask = self.forward_mask.mask
        keep = None if mask is None else self.token_mask(mask)
        if keep is not None:
            probs, chosen = probs[keep], chosen[keep]
        if probs.shape[0] == 0:
            return None
        counts = torch.bincount(chosen.reshape(-1), minlength=self.num_experts)
        load = counts.float() / chosen.numel()
        return self.load_balancing_coef * self.num_experts * (load * probs.mean(dim=0)).sum()

    def _dense_mix(self, flat: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """Every expert on every token, weighted by gates [T, N] (used when k = N)."""
        delta = self.expert_delta(0, flat) * gates[:, :1]
        for e in range(1, self.num_experts):
            delta = delta + self.expert_delta(e, flat) * gates[:, e : e + 1]
        return delta

    def _sparse_mix(
        self,
        flat: torch.Tensor,
        gates: torch.Tensor,
        chosen: torch.Tensor,
        counts: torch.Tensor,
        result: torch.Tensor,
    ) -> torch.Tensor:
        """Each expert only on its own tokens, added into the base output in place.

        (token, slot) pairs are sorted by expert and the tokens gathered once; each expert
        runs on its slice, gates and scaling are applied in rank space (r columns, not out),
        and index_add_ scatters into `result`. The base output is not needed by its own
        backward, so the in-place add is safe for autograd and saves two full-size copies.
        """
        order = chosen.reshape(-1).argsort(stable=True)
        rows = order // self.top_k
        weights = (gates * self.scaling_vector.to(gates.dtype)[chosen]).reshape(-1, 1)[order]
        routed = flat.index_select(0, rows)
        out = result.view(-1, result.shape[-1])
        # Few ops per expert: decoding runs this for every token, where dispatch dominates.
        # (ParameterList indexing is slow, hence the parameter dicts.)
        sizes = counts.tolist()
        for A, B, x_e, w_e, rows_e, size in zip(
            self.lora_A._parameters.values(),
            self.lora_B._parameters.values(),
            routed.split(sizes),
            weights.split(sizes),
            rows.split(sizes),
            sizes,
        ):
            if size:
                out.index_add_(0, rows_e, F.linear(F.linear(x_e, A) * w_e, B).to(out.dtype))
        return result

    def _fixed_mix(self, flat: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """The same gates for every token; experts with gate 0 are skipped entirely."""
        delta = flat.new_zeros(flat.shape[0], self.base_layer.out_features)
        for e, gate in enumerate(gates.tolist()):
            if gate != 0.0:
                delta = delta + self.expert_delta(e, flat) * gate
        return delta

    def extra_repr(self) -> str:
        ranks = [a.shape[0] for a in self.lora_A]
        return f"experts={self.num_experts}, ranks={ranks}, top_k={self.top_k}"
