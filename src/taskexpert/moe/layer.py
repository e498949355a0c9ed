"""A frozen nn.Linear plus N LoRA experts behind a per-token top-k router (docs/design.md Stage 3).

y = W0 x + sum over the k chosen experts of p_e * s_e * B_e A_e x, where p = softmax(W_g x)
restricted to the top k and renormalised, and s_e is each expert's own alpha/r (the reference
code forgot it). With a shared expert (MoeConfig.shared_rank > 0, MixLoRA / DeepSeekMoE) the
layer also adds s_s * B_s A_s x at gate 1 for every token, routed or under fixed gates, B_s
zero at attach time so the mixture starts exactly as without it. Its factors are stacked after
the experts' (below), so it adds rank columns to the two matmuls, not a matmul pair of its own.

How it is computed (issue 20: the mixture near one LoRA's cost). The router rows and every
expert's A are stacked into one [N + sum r_e, in] matrix, so one matmul per token gives z: the
router logits and every expert's rank-space projection h_e = A_e x. The gates are the softmax of
the top-k logits (equal to the renormalised top-k of the softmax). Then B, with each expert's
scaling folded in and N zero rows first, the router's place ([N + sum r_e, out], stacked), so
z needs no split:
- grouped (`_grouped_mix`, large batches where the unchosen experts hold many rank columns,
  see GROUPED_MIN_TOKENS): (token, slot) pairs
  sorted by expert; each expert's B runs only on the rows routed to it and index_add_ puts
  them into the base output in place, so B's cost grows with k, not with N;
- dense (`_dense_mix`, otherwise: decoding, small rank totals, or k = N): the gates, zero for
  the experts not chosen and the router's columns, scale z's columns and one addmm_ applies
  every B. Per decoded token it is ten small ops; at hidden 256 their dispatch, not the
  arithmetic, is the mixture's cost, so each op saved counts. There the loop over
  experts, the sort and the scatter cost more than the B columns of the unchosen experts (rank
  r_e each, against the base layer's `in` columns); the A step is dense over experts anyway.
The stacked weights are rebuilt from the parameters on every forward where a gradient can reach
them (so training updates the original tensors and the checkpoint layout is unchanged), and
otherwise cached, keyed on the parameters' version counters (any in-place change, as
load_state_dict, an optimizer step or copy_ make) and dropped on train()/eval(), .to() and
load_state_dict.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# The routers' weight names in a model with mixtures attached: `<module>.router.weight`.
ROUTER_PARAMETER_PATTERN = r"(^|\.)router\.weight$"
# B runs grouped by expert on its routed tokens only when a forward has more than
# GROUPED_MIN_TOKENS tokens AND the experts a token skips hold at least GROUPED_MIN_SKIPPED
# rank columns on average (sum r_e * (N - k) / N); otherwise one dense matmul over every
# expert's gated rank columns is faster. Measured by benchmarks/bench_moe_cost.py --crossover
# (1 thread, in 256 -> out 682): N=4, r=8 (16 skipped columns) dense wins even at 1024
# tokens (6.9 vs 7.5 ms); N=8 or 16 at r=16 (96, 224) and N=4 at r=64 (128) grouped wins from
# about 256 tokens (docs/design.md, mixture layer).
GROUPED_MIN_TOKENS = 128
GROUPED_MIN_SKIPPED = 64
_VERSION = operator.attrgetter("_version")


class RoutingStats(NamedTuple):
    """One layer's routing over the counted tokens of its last forward."""

    entropy: torch.Tensor  # mean entropy of the router distribution
    load: torch.Tensor  # [N] share of (token, slot) dispatches per expert; uniform is 1/N
    tokens: int  # tokens counted


class StackedWeights(NamedTuple):
    """The layer's trainable weights laid out for one matmul in and one out."""

    # [N + R, in]: the router's rows, then every expert's A, then the shared expert's
    # (R = sum r_e + r_s)
    weight: torch.Tensor
    # [N + R, out]: N zero rows (the router's columns of z), then s_e * B_e^T of every expert
    # (and s_s * B_s^T), in that order
    b_t: torch.Tensor


def lora_delta(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """s * B A x, computed as PEFT does (so one factor pair at gate 1 equals its LoRA)."""
    return F.linear(F.linear(x, A), B) * scaling


class SharedLora(nn.Module):
    """The always-on shared expert: lora_A [r, in], lora_B [out, r] and its scaling alpha/r."""

    def __init__(self, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> None:
        super().__init__()
        if lora_A.ndim != 2 or lora_B.ndim != 2 or lora_B.shape[1] != lora_A.shape[0]:
            raise ValueError(
                f"shared expert: lora_A {tuple(lora_A.shape)} and lora_B {tuple(lora_B.shape)} "
                "are not the factors of one LoRA"
            )
        self.lora_A = nn.Parameter(lora_A)
        self.lora_B = nn.Parameter(lora_B)
        self.scaling = float(scaling)

    @property
    def rank(self) -> int:
        return int(self.lora_A.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lora_delta(x, self.lora_A, self.lora_B, self.scaling)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling}"


class LastForward:
    """What the layer's last forward leaves for statistics and the loss: the input's leading
    shape, the router logits [T, N] and chosen experts [T, k] (detached, so statistics cost
    nothing until asked for; None under fixed gates) and the load-balancing loss (with grad).
    A plain object: nn.Module.__setattr__ costs microseconds a decoded token pays per layer."""

    __slots__ = ("shape", "logits", "chosen", "aux_loss")

    def __init__(self) -> None:
        self.shape: tuple[int, ...] = ()
        self.logits: torch.Tensor | None = None
        self.chosen: torch.Tensor | None = None
        self.aux_loss: torch.Tensor | None = None


class ForwardMask:
    """The attention mask of a model's current forward, one object shared by its layers."""

    __slots__ = ("mask",)

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None


def _reset_after_load(module: MixtureOfLoraLinear, _incompatible_keys) -> None:
    """load_state_dict post-hook (a function, not a lambda, so the module still pickles)."""
    module.reset_cache()


class MixtureOfLoraLinear(nn.Module):
    """Wraps a frozen linear layer; experts may have different ranks, each keeps its scaling."""

    def __init__(
        self,
        base_layer: nn.Linear,
        experts: Sequence[tuple[torch.Tensor, torch.Tensor, float]],
        top_k: int = 2,
        load_balancing_coef: float = 0.0,
        expert_names: Sequence[str] | None = None,
        shared: tuple[torch.Tensor, torch.Tensor, float] | None = None,
    ) -> None:
        """`shared`: the shared expert's (A_s, B_s, scaling), or None for none."""
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
        # Each expert's columns of z (start, end): after the router's N, in expert order (not
        # saved: the ranks are the parameters' shapes).
        ranks = [int(A.shape[0]) for A in self.lora_A]
        starts = [len(experts) + sum(ranks[:e]) for e in range(len(ranks) + 1)]
        self._columns = list(zip(starts, starts[1:]))
        self._shared_start = starts[-1]  # the shared expert's columns, if any, start here
        skipped = sum(ranks) * (len(ranks) - top_k) / len(ranks)
        self._groups = top_k < len(ranks) and skipped >= GROUPED_MIN_SKIPPED
        self.router = nn.Linear(base_layer.in_features, len(experts), bias=False, **factory)
        nn.init.zeros_(self.router.weight)
        # Registered only when there is one, so a mixture without keeps its state_dict layout.
        self.shared: SharedLora | None = None
        if shared is not None:
            A, B, scaling = shared
            fits = A.ndim == B.ndim == 2 and A.shape[1] == base_layer.in_features
            if not (fits and B.shape[0] == base_layer.out_features):
                raise ValueError(
                    f"shared expert: lora_A {tuple(A.shape)} / lora_B {tuple(B.shape)} do not "
                    f"fit a linear layer {base_layer.in_features} -> {base_layer.out_features}"
                )
            self.shared = SharedLora(
                A.detach().to(**factory).clone(), B.detach().to(**factory).clone(), scaling
            )
            ranks.append(self.shared.rank)  # its columns follow the experts', at gate 1
        # The gate of every column of z = [router logits | h] is a column of a [T, N + 2]
        # gate table: the experts' N, then the shared expert's (1) and the router's (0); the
        # table starts as `gate_template` and the chosen experts' gates are scattered in.
        n = len(experts)
        owners = [torch.full((n,), n + 1)]  # the router's columns: gate 0
        owners += [torch.full((r,), e) for e, r in enumerate(ranks)]  # shared: e == n, gate 1
        self.register_buffer("column_gate", torch.cat(owners).to(weight.device), persistent=False)
        template = torch.zeros(1, n + 2, **factory)
        template[0, n] = 1.0
        self.register_buffer("gate_template", template, persistent=False)
        self.top_k = top_k
        self.load_balancing_coef = load_balancing_coef
        self.expert_names = list(expert_names or [str(i) for i in range(len(experts))])
        # Fixed gates (shape [N]) replace the router: forced routing, or the merge's reference.
        self.fixed_gates: torch.Tensor | None = None
        self.last = LastForward()
        # The [batch, length] attention mask of the model's current forward, shared by every
        # mixture layer of a model and set once per forward by its pre-hook (moe/model.py):
        # the load-balancing loss leaves padding out with it.
        self.forward_mask = ForwardMask()
        self._cache: StackedWeights | None = None
        self._cache_versions: tuple[int, ...] = ()
        self._watched: tuple[torch.Tensor, ...] = ()
        self.reset_cache()
        self.register_load_state_dict_post_hook(_reset_after_load)

    @property
    def num_experts(self) -> int:
        return len(self.lora_A)

    # --- the stacked weights and their cache ------------------------------------------------

    def reset_cache(self) -> None:
        """Drop the cached stacked weights and re-read which tensors they are built from
        (after the parameters were replaced, e.g. load_state_dict(assign=True) or .to())."""
        self._cache = None
        self._cache_versions = ()
        shared = () if self.shared is None else (self.shared.lora_A, self.shared.lora_B)
        self._watched = (self.router.weight, *self.lora_A, *self.lora_B, *shared)

    def train(self, mode: bool = True) -> MixtureOfLoraLinear:
        self.reset_cache()
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):
        result = super()._apply(fn, recurse)
        self.reset_cache()
        return result

    def _stack(self) -> StackedWeights:
        """The stacked weights from the parameters (differentiable in them). The shared
        expert's factors come last, so it costs no matmul of its own (at the testbed's size a
        separate pair of small matmuls per layer is most of its cost)."""
        A, B, scaling = list(self.lora_A), list(self.lora_B), list(self.scaling)
        if self.shared is not None:
            A.append(self.shared.lora_A)
            B.append(self.shared.lora_B)
            scaling.append(self.shared.scaling)
        weight = torch.cat([self.router.weight, *A])
        router_rows = B[0].new_zeros(B[0].shape[0], self.num_experts)
        b_t = torch.cat([router_rows, *(b * s for b, s in zip(B, scaling))], dim=1).t()
        return StackedWeights(weight, b_t)

    def stacked_weights(self) -> StackedWeights:
        """Rebuilt on each call while a gradient can flow to the parameters, else cached until
        any of them changes in place (their version counters say so)."""
        if torch.is_grad_enabled() and any(p.requires_grad for p in self._watched):
            return self._stack()
        versions = tuple(map(_VERSION, self._watched))
        if self._cache is None or versions != self._cache_versions:
            # Built outside inference mode, so the cache serves later forwards in any mode.
            with torch.inference_mode(False), torch.no_grad():
                weight, b_t = self._stack()
                self._cache = StackedWeights(weight, b_t.contiguous())
            self._cache_versions = versions
        return self._cache

    # --- routing statistics ---------------------------------------------------------------

    @property
    def last_aux_loss(self) -> torch.Tensor | None:
        """The last routed forward's load-balancing loss (with grad); None without one."""
        return self.last.aux_loss

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
        lead = tuple(self.last.shape)
        mask = attention_mask
        if mask.dim() == len(lead) == 2 and mask.shape[0] == lead[0] and mask.shape[1] > lead[1]:
            mask = mask[:, mask.shape[1] - lead[1] :]
        if tuple(mask.shape) != lead:
            return None
        return mask.reshape(-1).to(device=self.router.weight.device, dtype=torch.bool)

    def _last_routing(
        self, token_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Router probabilities [T, N] and chosen experts [T, k] of the last routed forward
        over the kept tokens (the probabilities are computed only when asked for)."""
        logits, chosen = self.last.logits, self.last.chosen
        if logits is None or chosen is None:
            return None
        if token_mask is not None:
            logits, chosen = logits[token_mask], chosen[token_mask]
        return logits.float().softmax(dim=-1), chosen

    def routing_stats(self, token_mask: torch.Tensor | None = None) -> RoutingStats | None:
        """Entropy and load of the last routed forward over the tokens `token_mask` [T] keeps
        (all when None, e.g. padding included); None when no token was routed."""
        routed = self._last_routing(token_mask)
        if routed is None or routed[0].shape[0] == 0:
            return None
        probs, chosen = routed
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1).mean()
        counts = torch.bincount(chosen.reshape(-1), minlength=self.num_experts).float()
        return RoutingStats(entropy, counts / counts.sum(), probs.shape[0])

    def last_gates(
        self, token_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Renormalised top-k gates [T, k] and chosen experts [T, k] of the last routed forward
        over the tokens `token_mask` [T] keeps (all when None); None when none was routed."""
        routed = self._last_routing(token_mask)
        if routed is None:
            return None
        probs, chosen = routed
        top = probs.gather(1, chosen)
        return top / top.sum(dim=1, keepdim=True), chosen

    # --- the forward ------------------------------------------------------------------------

    def expert_delta(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """s_e * B_e A_e x (lora_delta)."""
        return lora_delta(x, self.lora_A[e], self.lora_B[e], self.scaling[e])

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        last = self.last
        last.shape = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        if self.fixed_gates is not None:
            last.logits = last.chosen = last.aux_loss = None
            flat = flat.to(self.router.weight.dtype)
            delta = self._fixed_mix(flat, self.fixed_gates)
            if self.shared is not None:
                delta = delta + self.shared(flat)
            return result + delta.reshape(result.shape).to(result.dtype)
        weight, b_t = self.stacked_weights()  # in the router's dtype
        if flat.dtype != weight.dtype:
            flat = flat.to(weight.dtype)
        z = F.linear(flat, weight)  # [T, N + R]: router logits, then every h_e = A_e x
        gates, chosen = self._route(z[:, : self.num_experts])
        out = result.view(-1, result.shape[-1])
        if self._groups and flat.shape[0] > GROUPED_MIN_TOKENS:
            self._grouped_mix(z, gates, chosen, b_t, out)
        else:
            self._dense_mix(z, gates, chosen, b_t, out)
        return result

    def _route(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gates [T, k] (softmax of the top-k logits, in float32) and expert indices [T, k]."""
        scores = logits if logits.dtype == torch.float32 else logits.float()
        top, chosen = scores.topk(self.top_k, dim=-1)
        gates = top.softmax(dim=-1)
        last = self.last
        last.logits = scores.detach() if scores.requires_grad else scores
        last.chosen = chosen
        last.aux_loss = None
        if self.load_balancing_coef > 0:
            last.aux_loss = self._balancing_loss(scores.softmax(dim=-1), chosen)
        return gates.to(logits.dtype), chosen

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

    def _dense_mix(
        self,
        z: torch.Tensor,
        gates: torch.Tensor,
        chosen: torch.Tensor,
        b_t: torch.Tensor,
        out: torch.Tensor,
    ) -> None:
        """Every expert's B in one matmul over z's gated columns (0 where not chosen and for
        the router's), added into the base output `out` [T, out] in place: few ops, for
        decoding."""
        # scatter on the expanded template clones it first: one op for the whole gate table
        table = self.gate_template.expand(gates.shape[0], -1).scatter(1, chosen, gates)
        gated = z * table.index_select(1, self.column_gate)
        if out.dtype == gated.dtype:
            out.addmm_(gated, b_t)
        else:
            out.add_((gated @ b_t).to(out.dtype))

    def _grouped_mix(
        self,
        z: torch.Tensor,
        gates: torch.Tensor,
        chosen: torch.Tensor,
        b_t: torch.Tensor,
        out: torch.Tensor,
    ) -> None:
        """Each expert's B only on its own tokens, added into the base output in place.

        (token, slot) pairs are sorted by expert; each expert takes its rows of z (its own
        columns, after the router's N), gated in rank space, and index_add_ scatters B's
        output into `out`. The base output is not needed by its own backward, so the in-place
        add is safe for autograd and saves two full-size copies.
        """
        flat_chosen = chosen.reshape(-1)
        order = flat_chosen.argsort(stable=True)
        rows = order // self.top_k
        weights = gates.reshape(-1, 1)[order]
        sizes = torch.bincount(flat_chosen, minlength=self.num_experts).tolist()
        for (start, end), rows_e, w_e, size in zip(
            self._columns, rows.split(sizes), weights.split(sizes), sizes
        ):
            if size:
                h_e = z[:, start:end].index_select(0, rows_e) * w_e
                out.index_add_(0, rows_e, (h_e @ b_t[start:end]).to(out.dtype))
        if self.shared is not None:  # every token, gate 1: the columns after the experts'
            start = self._shared_start
            out.add_((z[:, start:] @ b_t[start:]).to(out.dtype))

    def _fixed_mix(self, flat: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """The same gates for every token; experts with gate 0 are skipped entirely."""
        delta = flat.new_zeros(flat.shape[0], self.base_layer.out_features)
        for e, gate in enumerate(gates.tolist()):
            if gate != 0.0:
                delta = delta + self.expert_delta(e, flat) * gate
        return delta

    def extra_repr(self) -> str:
        ranks = [a.shape[0] for a in self.lora_A]
        shared = f", shared_rank={self.shared.rank}" if self.shared is not None else ""
        return f"experts={self.num_experts}, ranks={ranks}, top_k={self.top_k}{shared}"
