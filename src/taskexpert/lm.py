"""Causal-LM helpers shared by training, expert scoring, evaluation and DiverseEvol.

Encoding, masking and generation live here once, so that the loss a model is trained on and
the perplexity it is scored by mask exactly the same tokens. Nothing here assumes a tokenizer
or model size: it works for the testbed's tiny Llama and for a 7B model from a hub alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


def ensure_pad_token(tokenizer) -> int:
    """Causal LMs often ship without a pad token; reuse EOS (masked out anyway)."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer.pad_token_id


@dataclass
class EncodedPair:
    """Token ids of prompt+target, with labels masked (-100) over the prompt."""

    input_ids: list[int]
    labels: list[int]


def encode_pair(tokenizer, prompt: str, target: str, max_length: int = 1024) -> EncodedPair:
    """Prompt and target tokenised separately (so the boundary is exact), EOS appended.

    Truncation keeps the start of the prompt and cuts the target's tail, because the
    response tokens are what the loss and the perplexity are about.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        target_ids = target_ids + [tokenizer.eos_token_id]
    keep_prompt = min(len(prompt_ids), max(max_length // 2, max_length - len(target_ids)))
    prompt_ids = prompt_ids[:keep_prompt]
    target_ids = target_ids[: max_length - len(prompt_ids)]
    return EncodedPair(prompt_ids + target_ids, [IGNORE_INDEX] * len(prompt_ids) + target_ids)


def collate(pairs: Sequence[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padded positions get attention 0 and label -100."""
    width = max(len(p.input_ids) for p in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(pairs), width), dtype=torch.long)
    for row, pair in enumerate(pairs):
        n = len(pair.input_ids)
        input_ids[row, :n] = torch.tensor(pair.input_ids)
        labels[row, :n] = torch.tensor(pair.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def batches_by_length(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Index batches of similar length (less padding), in a deterministic order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def repeated_batches(lengths: Sequence[int], batch_size: int, copies: int) -> Iterator[list[int]]:
    """batches_by_length over n items, each batch repeated `copies` times, copy-major (copy c
    of item i is row c * n + i): the layout multi_lora's several-adapters batches need."""
    n = len(lengths)
    for idx in batches_by_length(lengths, batch_size):
        yield [c * n + i for c in range(copies) for i in idx]


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _token_losses(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """NLL of every next token from the first labelled one on (batch x columns) and the mask
    of the labelled ones.

    Logits are computed only from the first labelled column on (`logits_to_keep`, where the
    model takes it): the prompt's logits are never used, and with a large vocabulary they are
    most of the memory and a good part of the time of the pass.
    """
    device = model_device(model)
    batch = {k: v.to(device) for k, v in batch.items()}
    labelled = (batch["labels"] != IGNORE_INDEX).any(dim=0).nonzero()
    first = max(int(labelled[0]) if len(labelled) else 1, 1)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    keep = batch["labels"].shape[1] - first + 1  # positions first-1 ... last
    try:
        logits = model(**inputs, logits_to_keep=keep).logits
    except TypeError:  # a model without logits_to_keep: all positions
        logits = model(**inputs).logits
    logits = logits[:, -keep:]
    shift_logits = logits[:, :-1].float()
    shift_labels = batch["labels"][:, first:]
    mask = shift_labels != IGNORE_INDEX
    losses = torch.nn.functional.cross_entropy(
        shift_logits.transpose(1, 2), shift_labels.clamp(min=0), reduction="none"
    )
    return losses * mask, mask


def token_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example summed NLL over labelled tokens and the count of those tokens."""
    losses, mask = _token_losses(model, batch)
    return losses.sum(dim=1), mask.sum(dim=1)


@torch.no_grad()
def target_token_nlls(
    model,
    tokenizer,
    prompts: Sequence[str],
    targets: Sequence[str],
    batch_size: int = 16,
    max_length: int = 1024,
    copies: int = 1,
) -> list[list[float]]:
    """NLL of each target token given the prompt, per example (prompt tokens masked).

    `copies` > 1: every batch of `batch_size` examples is repeated that many times (see
    repeated_batches) and the result holds copies x len(prompts) rows, copy-major; the pairs
    are tokenized once whatever the count.
    """
    pad_id = ensure_pad_token(tokenizer)
    pairs = [
        encode_pair(tokenizer, p, t, max_length) for p, t in zip(prompts, targets, strict=True)
    ]
    n = len(pairs)
    result: list[list[float]] = [[] for _ in range(n * copies)]
    for idx in repeated_batches([len(p.input_ids) for p in pairs], batch_size, copies):
        losses, mask = _token_losses(model, collate([pairs[i % n] for i in idx], pad_id))
        for row, i in enumerate(idx):
            result[i] = losses[row][mask[row]].tolist()
    return result


def mean_nll(
    model,
    tokenizer,
    prompts: Sequence[str],
    targets: Sequence[str],
    batch_size: int = 16,
    max_length: int = 1024,
) -> list[float]:
    """Mean NLL per example of target given prompt; exp of it is the example's perplexity."""
    return per_example_means(
        target_token_nlls(model, tokenizer, prompts, targets, batch_size, max_length)
    )


def per_example_means(per_token: Sequence[Sequence[float]]) -> list[float]:
    """Each example's mean token NLL (0 for an example with no target token)."""
    return [sum(x) / max(len(x), 1) for x in per_token]


MAX_PROMPT_LENGTH = 1024  # prompt tokens kept (the last ones) when decoding


@torch.no_grad()
def generate_greedy(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 128,
    batch_size: int = 16,
    max_prompt_length: int = MAX_PROMPT_LENGTH,
    copies: int = 1,
) -> list[str]:
    """Batched greedy decoding with left padding; returns only the new text per prompt.

    `copies` as in target_token_nlls: copies x len(prompts) outputs, copy-major, from batches
    of `batch_size` prompts each repeated `copies` times, tokenized once.
    """
    pad_id = ensure_pad_token(tokenizer)
    device = model_device(model)
    encoded = [
        tokenizer(p, add_special_tokens=True)["input_ids"][-max_prompt_length:] for p in prompts
    ]
    n = len(encoded)
    outputs: list[str] = [""] * (n * copies)
    for idx in repeated_batches([len(e) for e in encoded], batch_size, copies):
        input_ids, attention = left_padded([encoded[i % n] for i in idx], pad_id)
        width = input_ids.shape[1]
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        for row, i in enumerate(idx):
            outputs[i] = tokenizer.decode(generated[row, width:], skip_special_tokens=True)
    return outputs


def left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows padded on the left to one width (decoding continues every row at the right
    edge): input ids and attention mask, on the CPU."""
    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention[row, width - len(ids) :] = 1
    return input_ids, attention


def cache_keyword(model) -> str:
    """The keyword a model's forward takes its KV cache by: `cache` in recent transformers
    (`past_key_values` is deprecated there), `past_key_values` before."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


LOGITS_BYTES = 512 * 2**20  # fp32 logits held at once when scoring continuations


def _column_chunks(columns: int, rows: int, vocab: int) -> Iterator[tuple[int, int]]:
    """[a, b) column ranges whose logits (rows x width x vocab, fp32) stay under
    LOGITS_BYTES: with many adapters' rows and a real vocabulary (SmolLM2: 49k) one pass over
    a 150-token rationale is 8 GB of logits, twice that with the loss."""
    width = max(1, LOGITS_BYTES // max(1, rows * vocab * 4))
    for a in range(0, columns, width):
        yield a, min(columns, a + width)


def _continuation_losses(
    model, cont_ids, cont_mask, attention, positions, labels, a: int, b: int, cached
) -> torch.Tensor:
    """Per-token losses of continuation columns [a, b) (each predicting the next column),
    feeding them through the KV cache, which grows by b - a."""
    device = cont_ids.device
    logits = model(
        input_ids=cont_ids[:, a:b],
        attention_mask=torch.cat([attention, cont_mask[:, 1:b]], dim=1),
        position_ids=positions[:, -1:] + torch.arange(a, b, device=device),
        use_cache=True,
        **cached,
    ).logits
    return torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), labels[:, a:b].clamp(min=0), reduction="none"
    )


@torch.no_grad()
def generate_and_score(
    model,
    tokenizer,
    prompts: Sequence[str],
    target_sets: Sequence[Sequence[str]],
    max_new_tokens: int = 128,
    batch_size: int = 16,
    copies: int = 1,
    select_rows: Callable[[torch.Tensor | None], None] | None = None,
    append_eos: bool = True,
) -> tuple[list[str], list[list[list[float]]]]:
    """generate_greedy and target_token_nlls (one result per target set) from one prompt
    pass per batch: the prompts' KV cache feeds every target set's continuation (cropped back
    after each) and then generation's prefill. The prompt, often most of an example's tokens,
    is computed once instead of once per target set plus once to generate.

    No truncation here: the caller checks that prompt + target fits (see scoring). Layout and
    `copies` as in target_token_nlls. Decoding drops the rows that finished (see
    greedy_from_cache); with copies > 1 only when `select_rows` tells the model (multi_lora's
    switcher) which block each remaining row belongs to. Targets end with EOS, as an SFT
    output does, unless `append_eos` is False (an option scored as it is); an empty target
    without EOS scores no token.
    """
    pad_id = ensure_pad_token(tokenizer)
    device = model_device(model)
    eos = [] if tokenizer.eos_token_id is None or not append_eos else [tokenizer.eos_token_id]
    encoded = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    targets = [
        [tokenizer(t, add_special_tokens=False)["input_ids"] + eos for t in target_set]
        for target_set in target_sets
    ]
    n = len(encoded)
    texts: list[str] = [""] * (n * copies)
    nlls: list[list[list[float]]] = [[[] for _ in range(n * copies)] for _ in target_sets]
    keyword = cache_keyword(model)
    for idx in repeated_batches([len(e) for e in encoded], batch_size, copies):
        input_ids, attention = left_padded([encoded[i % n] for i in idx], pad_id)
        input_ids, attention = input_ids.to(device), attention.to(device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        out = model(
            input_ids=input_ids[:, :-1],
            attention_mask=attention[:, :-1],
            position_ids=positions[:, :-1],
            use_cache=True,
            logits_to_keep=1,
        )
        cache = getattr(out, "cache", None) or out.past_key_values  # (renamed in 5.x)
        cached = {keyword: cache}  # the prompt but its last column, for all below
        for set_index, target_set in enumerate(targets):
            rows = [[input_ids[r, -1].item()] + target_set[i % n] for r, i in enumerate(idx)]
            cont = max(len(r) for r in rows)
            if cont == 1:  # every target of this batch is empty: nothing to score or crop
                continue
            cont_ids = torch.full((len(idx), cont), pad_id, dtype=torch.long, device=device)
            cont_mask = torch.zeros((len(idx), cont), dtype=torch.long, device=device)
            for r, ids in enumerate(rows):
                cont_ids[r, : len(ids)] = torch.tensor(ids)
                cont_mask[r, : len(ids)] = 1
            labels = cont_ids[:, 1:].masked_fill(cont_mask[:, 1:] == 0, IGNORE_INDEX)
            losses = torch.cat(
                [
                    _continuation_losses(
                        model, cont_ids, cont_mask, attention, positions, labels, a, b, cached
                    )
                    for a, b in _column_chunks(cont - 1, len(idx), len(tokenizer))
                ],
                dim=1,
            )
            # negative: tokens removed from the end, in every version; the continuation's last
            # column predicts nothing and was never fed
            cache.crop(-(cont - 1))
            for r, i in enumerate(idx):
                nlls[set_index][i] = losses[r][labels[r] != IGNORE_INDEX].tolist()
        block = len(idx) // copies
        new_tokens = greedy_from_cache(
            model, input_ids[:, -1:], attention, positions[:, -1:], cache, max_new_tokens,
            tokenizer.eos_token_id, select_rows,
            torch.arange(len(idx), device=device) // block if copies > 1 else None,
        )  # fmt: skip
        for r, i in enumerate(idx):
            texts[i] = tokenizer.decode(new_tokens[r], skip_special_tokens=True)
    return texts, nlls


def greedy_from_cache(
    model,
    last: torch.Tensor,
    attention: torch.Tensor,
    position: torch.Tensor,
    cache,
    max_new_tokens: int,
    eos_id: int | None,
    select_rows: Callable[[torch.Tensor | None], None] | None,
    slots: torch.Tensor | None,
) -> list[list[int]]:
    """Greedy decoding from a prompt cache (all but the prompts' `last` column); rows that
    emitted EOS leave the batch and the cache, so a batch no longer decodes at full width
    until its longest row ends. With `slots` (the slot of each row, multi_lora), rows leave
    only through `select_rows(slots of the rows left)`, reset to None at the end; without
    `select_rows` they then stay and are ignored. Tokens per row, EOS included: generate's
    greedy argmax (no logits processors)."""
    keyword = cache_keyword(model)
    droppable = slots is None or select_rows is not None
    alive = torch.arange(last.shape[0], device=last.device)  # batch row -> original row
    done = torch.zeros(last.shape[0], dtype=torch.bool, device=last.device)
    tokens: list[list[int]] = [[] for _ in range(last.shape[0])]
    step_ids = last
    for _ in range(max_new_tokens):
        logits = model(
            input_ids=step_ids,
            attention_mask=attention,
            position_ids=position,
            use_cache=True,
            logits_to_keep=1,
            **{keyword: cache},
        ).logits[:, -1]
        chosen = logits.argmax(dim=-1)
        for row, token, over in zip(alive.tolist(), chosen.tolist(), done.tolist(), strict=True):
            if not over:
                tokens[row].append(token)
        if eos_id is not None:
            done = done | (chosen == eos_id)
        if bool(done.all()):
            break
        if droppable and bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            alive, chosen, attention, position = (
                alive[keep], chosen[keep], attention[keep], position[keep]
            )  # fmt: skip
            done = done[keep]
            if slots is not None:
                select_rows(slots[alive])
        attention = torch.cat([attention, attention.new_ones(attention.shape[0], 1)], dim=1)
        position = position + 1
        step_ids = chosen[:, None]
    if slots is not None and select_rows is not None:
        select_rows(None)
    return tokens
