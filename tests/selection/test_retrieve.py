from __future__ import annotations

import numpy as np
import pytest

from taskexpert.embed import EmbeddingCache, l2_normalize
from taskexpert.errors import InputError
from taskexpert.records import Record
from taskexpert.selection.retrieve import select_data

MATH = [
    "Tom has 5 apples and buys 7 more. How many apples does he have now?",
    "A train travels 120 miles in 3 hours. What is its average speed in miles per hour?",
    "Sara earns $12 an hour and works 6 hours. How much money does she earn?",
    "A box holds 24 pencils. How many pencils are in 5 boxes?",
    "If 3 notebooks cost $9, how much do 7 notebooks cost?",
    "Jake read 40 pages on Monday and twice as many on Tuesday. How many pages did he read?",
]
OTHER = [
    "Write a Python function that reverses a string.",
    "Translate 'good morning' into French.",
    "Summarise the plot of Romeo and Juliet in one sentence.",
    "Name three primary colours.",
    "Give a recipe for a simple tomato soup.",
    "Which team won the 2010 football World Cup?",
    "Classify the sentiment of this review: the film was dull and far too long.",
    "Write a haiku about autumn leaves.",
    "Explain what photosynthesis is to a child.",
    "List four countries in South America.",
]
KSHOT = [
    Record(
        id="k1", instruction="Mary has 4 pears and eats 1. How many pears are left?", output="3"
    ),
    Record(
        id="k2", instruction="A car uses 5 litres per 100 km. How much for 300 km?", output="15"
    ),
    Record(id="k3", instruction="Ben buys 3 pens at $2 each. What does he pay?", output="$6"),
]


def make_pool() -> list[Record]:
    pool = [
        Record(id=f"o{i}", instruction=t, output="ok", source="other") for i, t in enumerate(OTHER)
    ]
    pool += [
        Record(id=f"m{i}", instruction=t, output="42", source="math") for i, t in enumerate(MATH)
    ]
    return pool


@pytest.mark.parametrize("mode", ["centroid", "max"])
def test_related_items_rank_first(minilm, mode):
    result = select_data(make_pool(), KSHOT, len(MATH), mode=mode, embedder=minilm)
    assert {r.source for r in result.records} == {"math"}
    assert list(result.scores) == sorted(result.scores, reverse=True)
    assert [r.score for r in result.records] == pytest.approx(result.scores.tolist(), abs=1e-5)
    summary = result.summary
    assert summary["selected_per_source"] == {"math": len(MATH)}
    assert summary["pool_size"] == len(OTHER) + len(MATH)
    assert set(summary["timings_s"]) >= {"embed_kshot_s", "pool_pass_s", "dedup_s", "total_s"}


def test_duplicate_removed_and_budget_refilled(minilm):
    pool = make_pool()
    copy = pool[len(OTHER)].model_copy(update={"id": "copy"})
    pool.append(copy)  # identical text, later pool position: ties go to the earlier one
    result = select_data(pool, KSHOT, len(MATH) + 1, embedder=minilm)
    ids = [r.id for r in result.records]
    assert "m0" in ids and "copy" not in ids
    assert len(ids) == len(MATH) + 1  # refilled from the ranking with a non-math item
    assert result.summary["removed_duplicates"] >= 1


def test_kshot_texts_in_pool_are_excluded(minilm):
    pool = make_pool() + [KSHOT[0].model_copy(update={"id": "leak"})]
    result = select_data(pool, KSHOT, 3, embedder=minilm)
    assert "leak" not in [r.id for r in result.records]
    assert result.summary["excluded_kshot_duplicates"] == 1


class TableEmbedder:
    """Fake embedder with fixed vectors per text, counting what it embeds."""

    def __init__(self, table: dict[str, np.ndarray], name: str = "table") -> None:
        self.table, self.name = table, name
        self.dim = len(next(iter(table.values())))
        self.embedded: list[str] = []

    def embed(self, texts, batch_size=64, progress=True):
        self.embedded.extend(texts)
        return l2_normalize(np.stack([self.table[t] for t in texts]))


def _records(vectors: dict[str, list[float]]) -> tuple[list[Record], TableEmbedder]:
    records = [Record(id=k, instruction=k, output="o", source=k[0]) for k in vectors]
    table = {r.text: np.asarray(v, dtype=np.float32) for r, v in zip(records, vectors.values())}
    return records, TableEmbedder(table)


def test_ties_keep_pool_order_and_mode_max_differs():
    vecs = {
        "q1": [1, 0, 0, 0],
        "q2": [0, 1, 0, 0],
        "a1": [1, 0, 0.1, 0],
        "b1": [0.7, 0.7, 0, 0.2],
        "a2": [0, 1, 0.1, 0],
        "b2": [0.7, 0.7, 0, 0.2],
        "c1": [0, 0, 0, 1],
    }
    records, fake = _records(vecs)
    kshot, pool = records[:2], records[2:]
    centroid = select_data(pool, kshot, 3, embedder=fake, dedup_threshold=None)
    assert [r.id for r in centroid.records] == ["b1", "b2", "a1"]  # b's point at the centroid
    best = select_data(pool, kshot, 2, embedder=fake, mode="max", dedup_threshold=None)
    assert [r.id for r in best.records] == ["a1", "a2"]  # each a is almost a K-shot item
    deduped = select_data(pool, kshot, 3, embedder=fake)
    assert [r.id for r in deduped.records] == ["b1", "a1", "a2"]


@pytest.mark.parametrize("kind", ["list", "generator", "reiterable"])
def test_refill_beyond_the_candidate_buffer(kind):
    # budget 2 keeps 4 candidates; the best 5 items are one vector, so dedup must read further.
    vecs = {f"d{i}": [1, 0, 0] for i in range(5)} | {"e0": [0.6, 0.8, 0], "f0": [0.5, 0, 0.86]}
    records, fake = _records(vecs)
    kshot = [Record(id="q", instruction="q", output="o")]
    fake.table[kshot[0].text] = np.array([1, 0, 0], dtype=np.float32)

    class Reiterable:
        def __iter__(self):
            return iter(records)

    pool = {
        "list": records,
        "generator": (r for r in records),
        "reiterable": Reiterable(),
    }[kind]
    result = select_data(pool, kshot, 2, embedder=fake)
    assert [r.id for r in result.records] == ["d0", "e0"]
    assert result.summary["removed_duplicates"] == 4


def test_two_stage_reranks_only_the_shortlist(tmp_path):
    names = [f"p{i}" for i in range(12)]
    rng = np.random.default_rng(0)
    records = [Record(id=n, instruction=n, output="o", source="s") for n in names]
    kshot = [Record(id="q", instruction="q", output="o")]
    fast_table = {r.text: l2_normalize(rng.normal(size=(1, 6)))[0] for r in records + kshot}
    slow_table = {r.text: l2_normalize(rng.normal(size=(1, 6)))[0] for r in records + kshot}
    fast, slow = TableEmbedder(fast_table, "fast"), TableEmbedder(slow_table, "slow")
    result = select_data(
        records,
        kshot,
        2,
        embedder=slow,
        shortlist_embedder=fast,
        shortlist_factor=2,
        dedup_threshold=None,
    )
    shortlist_scores = {r.text: fast_table[r.text] @ fast_table[kshot[0].text] for r in records}
    shortlist = sorted(records, key=lambda r: -shortlist_scores[r.text])[:4]
    reranked = sorted(shortlist, key=lambda r: -(slow_table[r.text] @ slow_table[kshot[0].text]))
    assert [r.id for r in result.records] == [r.id for r in reranked[:2]]
    assert sorted(slow.embedded) == sorted([kshot[0].text] + [r.text for r in shortlist])
    assert result.summary["shortlist_size"] == 4
    assert result.summary["shortlist_encoder"] == "fast"


def test_cache_makes_second_selection_embed_nothing(tmp_path):
    records, fake = _records({f"x{i}": [i, 1, 0] for i in range(8)})
    kshot = [Record(id="q", instruction="q", output="o")]
    fake.table[kshot[0].text] = np.array([1, 0, 0], dtype=np.float32)
    first = select_data(records, kshot, 3, embedder=fake, cache=EmbeddingCache(tmp_path))
    fake.embedded.clear()
    cache = EmbeddingCache(tmp_path)
    second = select_data(records, kshot, 3, embedder=fake, cache=cache)
    assert fake.embedded == []
    assert [r.id for r in second.records] == [r.id for r in first.records]
    assert second.summary["cache"]["misses"] == 0


def test_bad_arguments():
    records, fake = _records({"x0": [1, 0], "x1": [0, 1]})
    with pytest.raises(InputError, match="K-shot set is empty"):
        select_data(records, [], 1, embedder=fake)
    with pytest.raises(InputError, match="exceeds the pool size 2"):
        select_data(records, records[:1], 3, embedder=fake)
    with pytest.raises(InputError, match="exceeds the pool size 1"):  # a generator: after the pass
        select_data((r for r in records[1:]), records[:1], 2, embedder=fake)
    with pytest.raises(InputError, match="mode"):
        select_data(records, records[:1], 1, embedder=fake, mode="mean")
    with pytest.raises(InputError, match="budget"):
        select_data(records, records[:1], 0, embedder=fake)
    with pytest.raises(InputError, match="dedup"):
        select_data(records, records[:1], 1, embedder=fake, dedup_threshold=1.5)


def test_unnormalised_embedder_ranks_by_cosine():
    # Hidden-state embedders (issue 6) return raw vectors; a long vector must not win by length.
    vecs = {"q": [1, 0], "near": [0.9, 0.1], "long_far": [30, 40]}
    records, fake = _records(vecs)
    fake.embed = lambda texts, batch_size=64, progress=True: np.stack(
        [fake.table[t] for t in texts]
    )
    result = select_data(records[1:], records[:1], 2, embedder=fake, dedup_threshold=None)
    assert [r.id for r in result.records] == ["near", "long_far"]
    assert result.scores[0] == pytest.approx(0.9 / np.hypot(0.9, 0.1), abs=1e-6)
