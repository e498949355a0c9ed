"""The causal-LM embedder against the plain definition: mean of `output_hidden_states[layer]`
over the tokens of each text, one text at a time, whatever the batching, layer or output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from taskexpert.embed import Embedder
from taskexpert.errors import InputError
from taskexpert.lm_embed import (
    CausalLMEmbedder,
    padded_batches,
    pooled_hidden_states,
    resolve_layer,
)

TEXTS = [
    "a",
    "the quick brown fox",
    "jumps over the lazy dog, twice!",
    "12 + 30 = 42",
    "a",
    "Reverse the letters of abc.",
    "x" * 70,
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference(model, tokenizer, texts, layer: int) -> np.ndarray:
    """One unpadded sequence at a time, all hidden states requested: the reference code's way."""
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[layer]
            rows.append(hidden[0].mean(dim=0).numpy())
    return np.stack(rows)


@pytest.mark.parametrize("layer", ["last", -1, 0, 1, 2, "1"])
def test_matches_one_at_a_time_definition(tiny_llama, char_tokenizer, layer):
    embedder = CausalLMEmbedder(tiny_llama, char_tokenizer, layer=layer)
    got = embedder.embed(TEXTS, batch_size=3, progress=False)
    index = {"last": 2, -1: 2, "1": 1}.get(layer, layer)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(got, reference(tiny_llama, char_tokenizer, TEXTS, index), atol=2e-5)
    # raw means, not unit vectors: DiverseEvol measures Euclidean distances between them
    assert not np.allclose(np.linalg.norm(got, axis=1), 1.0)


def test_batching_and_token_budget_do_not_change_rows(tiny_llama, char_tokenizer):
    wide = CausalLMEmbedder(tiny_llama, char_tokenizer).embed(TEXTS, batch_size=64, progress=False)
    tight = CausalLMEmbedder(tiny_llama, char_tokenizer, max_batch_tokens=40)
    np.testing.assert_allclose(tight.embed(TEXTS, batch_size=64, progress=False), wide, atol=2e-5)
    # duplicates embed alike; rows of one batched matmul may round differently (other tiles)
    np.testing.assert_allclose(wide[0], wide[4], rtol=1e-6, atol=1e-6)


def test_padded_batches_are_length_sorted_within_chunks_and_cover_every_row():
    sequences = [[1] * n for n in (3, 9, 1, 7, 5, 2, 8)]
    seen = []
    for rows, ids, mask in padded_batches(sequences, batch_size=2, chunk_rows=4, pad_id=0):
        lengths = mask.sum(dim=1).tolist()
        assert lengths == sorted(lengths, reverse=True)
        assert ids.shape[1] == lengths[0]
        assert all(lengths[j] == len(sequences[r]) for j, r in enumerate(rows))
        seen += rows.tolist()
    assert sorted(seen) == list(range(7))
    assert set(seen[:4]) == {0, 1, 2, 3}  # the first chunk is finished before the second starts
    budget = list(padded_batches(sequences, batch_size=8, max_batch_tokens=10))
    assert all(ids.numel() <= 10 or len(rows) == 1 for rows, ids, _ in budget)


def test_memmap_output_equals_in_memory(tiny_llama, char_tokenizer, tmp_path):
    embedder = CausalLMEmbedder(tiny_llama, char_tokenizer, layer=1)
    in_memory = embedder.embed(TEXTS, batch_size=2, progress=False)
    on_disk = embedder.embed_to_file(TEXTS, tmp_path / "e.npy", batch_size=2, progress=False)
    assert isinstance(on_disk, np.memmap)
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), in_memory)
    assert [p.name for p in tmp_path.iterdir()] == ["e.npy"]  # no temp file left


def test_peft_wrapped_model_embeds_with_its_adapter(tiny_llama, char_tokenizer):
    from peft import LoraConfig, get_peft_model

    before = CausalLMEmbedder(tiny_llama, char_tokenizer).embed(TEXTS, progress=False)
    peft_model = get_peft_model(tiny_llama, LoraConfig(r=4, target_modules="all-linear"))
    embedder = CausalLMEmbedder(peft_model, char_tokenizer)
    np.testing.assert_allclose(embedder.embed(TEXTS, progress=False), before, atol=2e-5)  # B = 0
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.05)
    changed = CausalLMEmbedder(peft_model, char_tokenizer).embed(TEXTS, progress=False)
    assert np.abs(changed - before).max() > 1e-3


def test_protocol_name_and_options(tiny_llama, char_tokenizer):
    embedder = CausalLMEmbedder(tiny_llama, char_tokenizer, normalize=True)
    assert isinstance(embedder, Embedder) and embedder.dim == 32
    rows = embedder.embed(TEXTS, progress=False)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    raw = CausalLMEmbedder(tiny_llama, char_tokenizer)
    assert embedder.name != raw.name
    name = raw.name
    with torch.no_grad():
        next(tiny_llama.parameters()).add_(1.0)
    assert CausalLMEmbedder(tiny_llama, char_tokenizer).name != name  # new weights, new key


def test_training_flag_is_restored(tiny_llama, char_tokenizer):
    tiny_llama.train()
    CausalLMEmbedder(tiny_llama, char_tokenizer).embed(TEXTS[:2], progress=False)
    assert tiny_llama.training


def test_bad_input(tiny_llama, char_tokenizer):
    for layer in (3, -4, "middle"):
        with pytest.raises(InputError, match="embed layer"):
            resolve_layer(tiny_llama, layer)
    with pytest.raises(InputError, match="no tokens"):
        CausalLMEmbedder(tiny_llama, char_tokenizer).embed(["ok", ""], progress=False)
    with pytest.raises(InputError, match="expected 3"):
        pooled_hidden_states(tiny_llama, [[5, 6], [7]], 3, progress=False)
    with pytest.raises(InputError, match="shape"):
        pooled_hidden_states(tiny_llama, [[5]], 1, out=np.zeros((1, 4), np.float32))
