from __future__ import annotations

import hashlib

import numpy as np
import pytest

from taskexpert.embed import (
    EmbeddingCache,
    SentenceEncoder,
    StaticEncoder,
    embed_records,
    embed_texts,
    l2_normalize,
    resolve_embedder,
)
from taskexpert.errors import InputError
from taskexpert.records import Record


class CountingEmbedder:
    """Deterministic fake: a text's vector is seeded by its hash; counts what it embeds."""

    def __init__(self, name: str = "fake-v1", dim: int = 8) -> None:
        self.name, self.dim = name, dim
        self.calls = 0
        self.embedded: list[str] = []

    def embed(self, texts, batch_size=64, progress=True):
        self.calls += 1
        self.embedded.extend(texts)
        rows = [
            np.random.default_rng(int(hashlib.md5(t.encode()).hexdigest()[:8], 16)).normal(
                size=self.dim
            )
            for t in texts
        ]
        return l2_normalize(np.array(rows).reshape(len(texts), self.dim))


TEXTS = [f"text number {i}" for i in range(30)]


def test_sentence_encoder_is_normalised_and_order_preserving(minilm):
    texts = ["short", "a considerably longer sentence about apples and oranges", "medium text"]
    vecs = minilm.embed(texts, batch_size=2)
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    singles = np.concatenate([minilm.embed([t]) for t in texts])
    np.testing.assert_allclose(vecs, singles, atol=1e-4)


def test_sentence_encoder_similar_texts_are_closer(minilm):
    a, b, c = minilm.embed(
        [
            "How many apples does Tom have after buying three more?",
            "Mary buys 4 pears and eats one. How many pears are left?",
            "Write a Python function that reverses a linked list.",
        ]
    )
    assert a @ b > a @ c + 0.1


def test_sentence_encoder_caps_sequence_length(minilm):
    assert minilm.model.max_seq_length == 256
    assert "len256" in minilm.name


def test_cache_second_run_embeds_nothing(tmp_path):
    fake = CountingEmbedder()
    first = embed_texts(TEXTS, fake, EmbeddingCache(tmp_path))
    assert len(fake.embedded) == len(TEXTS)
    fake.embedded.clear()
    cache = EmbeddingCache(tmp_path)  # a new process would start like this
    again = embed_texts(TEXTS[::-1], fake, cache)
    assert fake.embedded == []
    assert (cache.hits, cache.misses) == (len(TEXTS), 0)
    np.testing.assert_array_equal(again, first[::-1])


def test_cache_embeds_only_new_and_distinct_texts(tmp_path):
    fake = CountingEmbedder()
    cache = EmbeddingCache(tmp_path)
    embed_texts(TEXTS[:10], fake, cache)
    fake.embedded.clear()
    vecs = embed_texts(TEXTS[5:15] + ["dup", "dup", "dup"], fake, cache)
    assert sorted(fake.embedded) == sorted(TEXTS[10:15] + ["dup"])
    np.testing.assert_array_equal(vecs[-1], vecs[-2])
    assert vecs.shape == (13, 8)


def test_cache_is_keyed_by_embedder_name(tmp_path):
    cache = EmbeddingCache(tmp_path)
    embed_texts(TEXTS, CountingEmbedder("a"), cache)
    other = CountingEmbedder("b")
    embed_texts(TEXTS, other, cache)
    assert len(other.embedded) == len(TEXTS)


def test_cache_shards_are_memory_mapped_and_split(tmp_path):
    fake = CountingEmbedder()
    embed_texts(TEXTS, fake, EmbeddingCache(tmp_path, shard_rows=8))
    assert fake.calls == 4  # 30 misses in shards of 8: an interrupted run keeps the finished ones
    store = EmbeddingCache(tmp_path).store_for(fake.name)
    assert len(store.shards) == 4
    assert all(isinstance(shard, np.memmap) for shard in store.shards)


def test_shard_size_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKEXPERT_CACHE_SHARD_ROWS", "7")
    fake = CountingEmbedder()
    embed_texts(TEXTS, fake, EmbeddingCache(tmp_path))
    assert fake.calls == 5  # 30 texts in shards of 7
    assert EmbeddingCache(tmp_path, shard_rows=100).shard_rows == 100  # an argument wins
    monkeypatch.setenv("TASKEXPERT_CACHE_SHARD_ROWS", "lots")
    with pytest.raises(InputError, match="TASKEXPERT_CACHE_SHARD_ROWS must be a positive"):
        EmbeddingCache(tmp_path)
    monkeypatch.setenv("TASKEXPERT_CACHE_SHARD_ROWS", "")
    assert EmbeddingCache(tmp_path).shard_rows == 16_384


def test_cache_ignores_half_written_shard(tmp_path):
    fake = CountingEmbedder()
    cache = EmbeddingCache(tmp_path)
    embed_texts(TEXTS, fake, cache)
    store_dir = cache.store_for(fake.name).dir
    keys = next(store_dir.glob("*.keys.npy"))
    keys.unlink()  # as if the run died between the vector file and the keys file
    fake.embedded.clear()
    embed_texts(TEXTS, fake, EmbeddingCache(tmp_path))
    assert len(fake.embedded) == len(TEXTS)


def test_cache_rejects_dimension_change(tmp_path):
    cache = EmbeddingCache(tmp_path)
    embed_texts(TEXTS[:3], CountingEmbedder("same", dim=8), cache)
    with pytest.raises(InputError, match="dimension 4"):
        embed_texts(TEXTS[3:6], CountingEmbedder("same", dim=4), cache)


def test_embed_records_uses_record_text(tmp_path):
    fake = CountingEmbedder()
    rec = Record(id="1", instruction="Add", input="2 and 3", output="5")
    embed_records([rec], fake)
    assert fake.embedded == ["Add\n2 and 3\n5"]


def _tiny_model2vec(path, dim=16):
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    from taskexpert.embed import default_encoder_path

    tokenizer = Tokenizer.from_file(str(default_encoder_path() / "tokenizer.json"))
    vectors = np.random.default_rng(0).normal(size=(tokenizer.get_vocab_size(), dim))
    StaticModel(vectors.astype(np.float32), tokenizer, normalize=True).save_pretrained(path)


def test_static_encoder_from_directory(tmp_path):
    _tiny_model2vec(tmp_path / "m2v")
    encoder = resolve_embedder(tmp_path / "m2v")
    assert isinstance(encoder, StaticEncoder)
    vecs = encoder.embed(["hello world", "hello world", "something else"])
    assert vecs.shape == (3, 16) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vecs[0], vecs[1])


def test_resolve_embedder_kinds(tmp_path):
    assert isinstance(resolve_embedder("default"), SentenceEncoder)
    with pytest.raises(InputError, match="encoder must be"):
        resolve_embedder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a sentence-transformers model directory"):
        resolve_embedder(tmp_path / "empty")


def test_encoder_name_changes_with_settings():
    assert SentenceEncoder(max_seq_length=128).name != SentenceEncoder().name


@pytest.mark.slow
def test_static_encoder_distils_once(tmp_path):
    first = StaticEncoder(models_dir=tmp_path)
    vecs = first.embed(["the cat sat on the mat", "a dog lay on the rug", "integral calculus"])
    assert vecs.shape == (3, 256)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2]
    assert (first.path / "config.json").is_file()
    second = StaticEncoder(models_dir=tmp_path)
    assert second.name == first.name
    np.testing.assert_allclose(second.embed(["integral calculus"])[0], vecs[2], atol=1e-6)
