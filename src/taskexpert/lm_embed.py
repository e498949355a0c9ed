"""Causal-LM hidden-state embeddings: the model's own view of the data (DiverseEvol, Stage 4).

A text's vector is the mean of one hidden layer over all its non-pad tokens, as in the
DiverseEvol reference code, and by default it is *not* normalised (the paper measures
Euclidean distances between raw means). Embedding the whole pool with every round's model is
the dominant cost of a DiverseEvol run, so the pass is lean:

- inference mode, no KV cache, and never the LM head: the last layer comes from the backbone,
  an earlier layer from a forward pre-hook on the next decoder layer that stops the pass there;
- sequences are taken a chunk at a time, sorted by length inside the chunk (longest first, so
  the biggest batch comes first) and padded per batch, with a token budget per batch;
- rows are written straight into `out` (an array or an `np.memmap`), so a 10^6-row pool needs
  O(batch) memory besides the output file.

Layer indices follow `output_hidden_states`: 0 is the embedding output, i the output of decoder
layer i, and `"last"` (= the number of layers, or -1) the final, normed hidden state.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from taskexpert.errors import InputError
from taskexpert.progress import progress as progress_bar

CHUNK_ROWS = 4096  # sequences sorted together; bounds the RAM held for token ids
DEFAULT_BATCH_TOKENS = 16_384  # padded tokens per forward pass


class _StopForward(Exception):
    """Raised by the capture hook: the layers after the chosen one need not run."""


def unwrap_causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PEFT wrapper (its LoRA layers stay injected)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def text_config(model: torch.nn.Module):
    config = unwrap_causal_lm(model).config
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def num_layers(model: torch.nn.Module) -> int:
    return int(text_config(model).num_hidden_layers)


def hidden_size(model: torch.nn.Module) -> int:
    return int(text_config(model).hidden_size)


def resolve_layer(model: torch.nn.Module, layer: int | str) -> int:
    """`"last"` or an index into `output_hidden_states` (negative counts from the end) -> 0..L."""
    count = num_layers(model)
    if isinstance(layer, str):
        if layer.strip().lower() == "last":
            return count
        try:
            layer = int(layer)
        except ValueError:
            raise InputError(
                f"embed layer must be 'last' or an integer, got {layer!r}", field="embed_layer"
            ) from None
    if not -(count + 1) <= layer <= count:
        raise InputError(
            f"embed layer {layer} is out of range: the model has hidden states 0..{count}",
            field="embed_layer",
        )
    return layer % (count + 1)


def _backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer without its LM head (LlamaModel inside LlamaForCausalLM)."""
    inner = unwrap_causal_lm(model)
    base = getattr(inner, "base_model", inner)
    return base if isinstance(base, torch.nn.Module) else inner


def _decoder_layers(backbone: torch.nn.Module, count: int) -> torch.nn.ModuleList | None:
    """The ModuleList holding the decoder layers (`layers`, `h`, `blocks`, ...), if found."""
    for module in backbone.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    return None


class _HiddenStates:
    """Callable (input_ids, attention_mask) -> hidden states of the chosen layer, cheaply."""

    def __init__(self, model: torch.nn.Module, index: int) -> None:
        self.backbone = _backbone(model)
        self.index, self.count = index, num_layers(model)
        self.layers = _decoder_layers(self.backbone, self.count) if index < self.count else None

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        if self.index == self.count:
            return self.backbone(**kwargs).last_hidden_state
        if self.layers is None:  # unknown layout: ask for every hidden state
            return self.backbone(**kwargs, output_hidden_states=True).hidden_states[self.index]
        captured: list[torch.Tensor] = []

        def capture(module, args, kwargs_):
            captured.append(args[0] if args else kwargs_["hidden_states"])
            raise _StopForward

        handle = self.layers[self.index].register_forward_pre_hook(capture, with_kwargs=True)
        try:
            self.backbone(**kwargs)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"decoder layer {self.index} was never called")
        return captured[0]


def padded_batches(
    sequences: Iterable[Sequence[int]],
    *,
    batch_size: int,
    max_batch_tokens: int | None = None,
    pad_id: int = 0,
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """(row indices, right-padded input_ids, attention_mask) batches of similar length.

    Sequences are read `chunk_rows` at a time and sorted longest first inside the chunk; a
    batch holds at most `batch_size` rows and `max_batch_tokens` padded tokens (one row at
    least). Empty sequences are an error: they have no token to average.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}", field="batch_size")
    chunk: list[Sequence[int]] = []
    offset = 0
    for seq in sequences:
        chunk.append(seq)
        if len(chunk) == chunk_rows:
            yield from _chunk_batches(chunk, offset, batch_size, max_batch_tokens, pad_id)
            offset += len(chunk)
            chunk = []
    if chunk:
        yield from _chunk_batches(chunk, offset, batch_size, max_batch_tokens, pad_id)


def _chunk_batches(
    chunk: list[Sequence[int]],
    offset: int,
    batch_size: int,
    max_batch_tokens: int | None,
    pad_id: int,
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    lengths = np.fromiter((len(s) for s in chunk), dtype=np.int64, count=len(chunk))
    if (lengths == 0).any():
        raise InputError(f"sequence {offset + int(np.argmin(lengths))} has no tokens")
    order = np.argsort(-lengths, kind="stable")
    start = 0
    while start < len(order):
        width = int(lengths[order[start]])
        rows = batch_size if not max_batch_tokens else min(batch_size, max_batch_tokens // width)
        picked = order[start : start + max(1, rows)]
        input_ids = torch.full((len(picked), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(picked), width), dtype=torch.long)
        for row, i in enumerate(picked):
            n = int(lengths[i])
            input_ids[row, :n] = torch.as_tensor(chunk[i], dtype=torch.long)
            attention[row, :n] = 1
        yield picked + offset, input_ids, attention
        start += len(picked)


def pooled_hidden_states(
    model: torch.nn.Module,
    sequences: Iterable[Sequence[int]],
    total: int,
    *,
    layer: int | str = "last",
    batch_size: int = 32,
    max_batch_tokens: int | None = DEFAULT_BATCH_TOKENS,
    pad_id: int = 0,
    normalize: bool = False,
    out: np.ndarray | None = None,
    progress: bool = True,
    desc: str = "embedding",
) -> np.ndarray:
    """(total, hidden) float32: mean of `layer` over each sequence's tokens, in input order.

    `sequences` (token id lists) are streamed; `out`, when given, receives the rows (e.g. an
    `np.memmap`) and is returned. The model runs in eval mode and is put back as it was.
    """
    index = resolve_layer(model, layer)
    dim = hidden_size(model)
    if out is None:
        out = np.empty((total, dim), dtype=np.float32)
    elif out.shape != (total, dim):
        raise InputError(f"out has shape {out.shape}, expected {(total, dim)}", field="out")
    forward = _HiddenStates(model, index)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    written = 0
    bar = progress_bar(total=total, desc=desc, unit="text", enabled=progress)
    try:
        with torch.inference_mode(), bar:
            for rows, input_ids, attention in padded_batches(
                sequences, batch_size=batch_size, max_batch_tokens=max_batch_tokens, pad_id=pad_id
            ):
                if rows.max() >= total:
                    raise InputError(f"more than {total} sequences were given", field="total")
                mask = attention.to(device)
                hidden = forward(input_ids.to(device), mask)
                weights = mask.unsqueeze(-1).to(torch.float32)
                pooled = (hidden.float() * weights).sum(dim=1) / weights.sum(dim=1)
                if normalize:
                    pooled = torch.nn.functional.normalize(pooled, dim=1)
                _write_rows(out, rows, pooled.cpu().numpy())
                written += len(rows)
                bar.update(len(rows))
    finally:
        model.train(was_training)
    if written != total:
        raise InputError(f"got {written} sequences, expected {total}", field="total")
    return out


def _write_rows(out: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """Scatter a batch into `out`; sorted row order keeps memmap writes close together."""
    order = np.argsort(rows)
    out[rows[order]] = values[order]


def open_rows_memmap(path: str | Path, rows: int, dim: int) -> np.memmap:
    """A float32 .npy file of shape (rows, dim) opened for writing, loadable by `np.load`."""
    return np.lib.format.open_memmap(Path(path), mode="w+", dtype=np.float32, shape=(rows, dim))


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha1 of every parameter's bytes: changes whenever the vectors could (a pass over the
    weights, about a second per GB)."""
    digest = hashlib.sha1()
    for name, param in sorted(unwrap_causal_lm(model).named_parameters()):
        digest.update(name.encode())
        tensor = param.detach().cpu().contiguous()
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:12]


class CausalLMEmbedder:
    """The `Embedder` protocol over a causal LM: mean-pooled hidden states of texts.

    Unlike the sentence encoders, rows are raw (not L2-normalised) unless `normalize=True`,
    because DiverseEvol measures Euclidean distance between raw means. Texts are tokenised with
    the tokenizer's special tokens and cut at `max_length` tokens. `name` (which keys the
    embedding cache) includes a hash of the weights, computed on first use.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        layer: int | str = "last",
        max_length: int = 512,
        normalize: bool = False,
        max_batch_tokens: int | None = DEFAULT_BATCH_TOKENS,
        name: str | None = None,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.layer = resolve_layer(model, layer)
        self.max_length, self.normalize = max_length, normalize
        self.max_batch_tokens = max_batch_tokens
        self._name = name

    @property
    def name(self) -> str:
        if self._name is None:
            source = Path(str(getattr(text_config(self.model), "_name_or_path", "") or "lm")).name
            pooling = "l2" if self.normalize else "raw"
            self._name = (
                f"lm-{source}-{weights_fingerprint(self.model)}-h{self.layer}"
                f"-len{self.max_length}-mean-{pooling}"
            )
        return self._name

    @property
    def dim(self) -> int:
        return hidden_size(self.model)

    @property
    def pad_id(self) -> int:
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if candidate is not None:
                return int(candidate)
        return 0  # padding is masked out: any id works

    def token_ids(self, texts: Iterable[str], chunk_rows: int = CHUNK_ROWS) -> Iterator[list[int]]:
        """Token ids per text, tokenised a chunk at a time (the fast tokenizer batches)."""
        chunk: list[str] = []
        for text in texts:
            chunk.append(text)
            if len(chunk) == chunk_rows:
                yield from self._tokenize(chunk)
                chunk = []
        if chunk:
            yield from self._tokenize(chunk)

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        encoded = self.tokenizer(
            texts, add_special_tokens=True, truncation=True, max_length=self.max_length
        )["input_ids"]
        return list(encoded)

    def embed(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        progress: bool = True,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """(len(texts), dim) float32 rows in input order; into `out` (e.g. a memmap) if given."""
        return pooled_hidden_states(
            self.model,
            self.token_ids(texts),
            len(texts),
            layer=self.layer,
            batch_size=batch_size,
            max_batch_tokens=self.max_batch_tokens,
            pad_id=self.pad_id,
            normalize=self.normalize,
            out=out,
            progress=progress,
            desc=f"embedding (layer {self.layer})",
        )

    def embed_to_file(
        self, texts: Sequence[str], path: str | Path, batch_size: int = 32, progress: bool = True
    ) -> np.memmap:
        """Embed into a .npy file, memory-mapped: built under a temp name, renamed when whole."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            out = open_rows_memmap(tmp, len(texts), self.dim)
            self.embed(texts, batch_size=batch_size, progress=progress, out=out)
            out.flush()
            del out
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return np.load(path, mmap_mode="r")


def train_format_ids(tokenizer, records: Sequence, max_length: int) -> Iterator[list[int]]:
    """Token ids of prompt + output + EOS, exactly the sequences a model trains on (the text
    DiverseEvol embeds and scores, so selection sees what training will see)."""
    from taskexpert.lm import encode_pair
    from taskexpert.prompts import format_prompt

    for record in records:
        yield encode_pair(
            tokenizer, format_prompt(record, tokenizer), record.output, max_length
        ).input_ids
