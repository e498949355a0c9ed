"""Several LoRA adapters in one forward pass (punica / S-LoRA style, for scoring).

Scoring a bank one adapter at a time pays the per-step overhead of decoding (Python, kernel
launches, reading the base weights) once per adapter. Here a batch holds G equal blocks of
rows, block g belonging to adapter g: each adapted linear layer computes the base output for
every row at once and adds block g's low-rank update with one batched matmul over the stacked
factors (G x in x r, G x r x out). G adapters then cost about one decode loop, not G.

The layout is the contract: rows are adapter-major, G blocks of equal size, so no per-row
gather is needed. A slot without factors (the base model, or an adapter that does not touch
a layer) has zero factors and adds exactly 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from taskexpert.bank import LoraAdapter


class MultiLoraLinear(torch.nn.Module):
    """A linear layer plus one LoRA update per block of rows (see the module docstring)."""

    def __init__(self, base: torch.nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.A: torch.Tensor | None = None  # G x in x r
        self.B: torch.Tensor | None = None  # G x r x out, the scaling folded in
        self.rows: torch.Tensor | None = None  # slot per row; None: G equal blocks of rows
        self.mask: torch.Tensor | None = None  # rows x 1 x G*r: 1 over each row's own slot

    def load(self, factors: Sequence[tuple[torch.Tensor, torch.Tensor, float] | None]) -> None:
        """One (A [r, in], B [out, r], scaling) or None per slot; ranks are zero-padded and
        the scaling is folded into B (one multiply less per step; rounding moves by ~1e-7)."""
        weight = self.base.weight
        rank = max((f[0].shape[0] for f in factors if f is not None), default=0)
        if rank == 0:
            self.A = self.B = None
            return
        slots = len(factors)
        A = torch.zeros(slots, weight.shape[1], rank, dtype=weight.dtype, device=weight.device)
        B = torch.zeros(slots, rank, weight.shape[0], dtype=weight.dtype, device=weight.device)
        for slot, factor in enumerate(factors):
            if factor is not None:
                a, b, scaling = factor
                A[slot, :, : a.shape[0]] = a.T.to(weight)
                B[slot, : b.shape[1]] = (scaling * b.float()).T.to(weight)
        self.A, self.B = A, B

    def _mask(self, rank: int) -> torch.Tensor:
        if self.mask is None or self.mask.shape[0] != self.rows.shape[0]:
            slots = torch.arange(self.A.shape[0], device=self.rows.device).repeat_interleave(rank)
            self.mask = (self.rows[:, None] == slots).to(self.A.dtype)[:, None, :]
        return self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.A is None:
            return out
        if self.rows is not None:
            # any rows, any order: every slot's low-rank projection in one matmul, the other
            # slots' zeroed, one matmul back (cheaper than gathering factors per row)
            slots, fan_in, rank = self.A.shape
            a_all = self.A.permute(1, 0, 2).reshape(fan_in, slots * rank)
            low = (x.to(self.A.dtype) @ a_all) * self._mask(rank)
            return out + (low @ self.B.reshape(slots * rank, -1)).to(out.dtype)
        slots = self.A.shape[0]
        if x.shape[0] % slots:
            raise ValueError(f"a batch of {x.shape[0]} rows does not split into {slots} adapters")
        blocks = x.to(self.A.dtype).reshape(slots, -1, x.shape[-1])
        low = torch.bmm(blocks, self.A)
        if out.dtype != self.B.dtype:
            return out + torch.bmm(low, self.B).reshape(out.shape).to(out.dtype)
        # out is this call's own fresh tensor: add the update in place, fused with the matmul
        out.reshape(slots, -1, out.shape[-1]).baddbmm_(low, self.B)
        return out


def supports(model: torch.nn.Module, adapters: Sequence[LoraAdapter]) -> bool:
    """True when every module the adapters touch is a plain nn.Linear (not Conv1D, embedding)."""
    names = {name for adapter in adapters for name in adapter.modules}
    try:
        return all(type(model.get_submodule(n)) is torch.nn.Linear for n in names)
    except AttributeError:
        return False


class MultiLoraSwitcher:
    """Wrap the layers a group of adapters touches and load the group's stacked factors.

    A context manager like peft_glue.AdapterSwitcher: on exit the original nn.Linear modules
    are put back, so the caller's base model is the same object with the same weights.
    """

    def __init__(self, base_model: torch.nn.Module) -> None:
        self.base_model = base_model
        self.layers: dict[str, MultiLoraLinear] = {}

    def __enter__(self) -> MultiLoraSwitcher:
        self._training = self.base_model.training
        self.base_model.eval()
        return self

    def activate(self, group: Sequence[LoraAdapter | None]) -> torch.nn.Module:
        """Slot g of every batch row block scores group[g] (None: the base model itself)."""
        names = {name for adapter in group if adapter is not None for name in adapter.modules}
        for name in sorted(names - set(self.layers)):
            parent_name, _, child = name.rpartition(".")
            parent = self.base_model.get_submodule(parent_name) if parent_name else self.base_model
            layer = MultiLoraLinear(getattr(parent, child))
            setattr(parent, child, layer)
            self.layers[name] = layer
        for name, layer in self.layers.items():
            layer.load([_factors(adapter, name) for adapter in group])
        return self.base_model

    def select_rows(self, rows: torch.Tensor | None) -> None:
        """From now on row i of a batch belongs to slot rows[i] (None: back to equal blocks),
        e.g. after decoding dropped the rows that finished."""
        for layer in self.layers.values():
            layer.rows, layer.mask = rows, None

    def __exit__(self, *exc) -> None:
        for name, layer in self.layers.items():
            parent_name, _, child = name.rpartition(".")
            parent = self.base_model.get_submodule(parent_name) if parent_name else self.base_model
            setattr(parent, child, layer.base)
        self.layers.clear()
        self.base_model.train(self._training)


def _factors(adapter: LoraAdapter | None, name: str):
    module = adapter.modules.get(name) if adapter is not None else None
    return None if module is None else (module.A, module.B, module.scaling)
