"""The leakage checks: each catches what it should and not the near-miss next to it; streaming
in small batches gives the same result as one batch."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from taskexpert.records import Record
from taskexpert.selection.leakage import EvalIndex, find_leaks, ngram_digests, normalize

WORDS = [f"w{k}" for k in range(200)]


def record(text: str, rid: str = "r") -> Record:
    return Record(id=rid, instruction=text, output="out")


def words(start: int, count: int) -> str:
    return " ".join(WORDS[start : start + count])


class TableEmbedder:
    """Texts to fixed vectors, so a test sets each cosine exactly; unknown texts get a far
    vector of their own."""

    name = "table"

    def __init__(self, table: dict[str, Sequence[float]], dim: int = 8) -> None:
        self.table = {text: np.asarray(vec, dtype=np.float32) for text, vec in table.items()}
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts, batch_size: int = 64, progress: bool = True) -> np.ndarray:
        rows = []
        for text in texts:
            if text in self.table:
                rows.append(np.pad(self.table[text], (0, self._dim - len(self.table[text]))))
            else:
                rows.append(np.eye(self._dim, dtype=np.float32)[-1])
        return np.stack(rows)


def at_cosine(c: float) -> list[float]:
    """A unit vector with cosine `c` to e0, in the e0-e1 plane."""
    return [c, math.sqrt(1 - c * c)]


def test_normalize_folds_case_space_punctuation_and_width():
    assert normalize("  What IS the  Sum,\tof ｘ and y?!") == "what is the sum of x and y"
    assert normalize("3 + 4 = 7") == "3 + 4 = 7"  # symbols are kept: "3 + 4" is not "3 4"


def test_exact_match_after_normalisation_and_not_a_one_word_change():
    index = EvalIndex([record("What is the capital of France?")], cosine=0)
    leaks = find_leaks(
        [
            record("what is  the CAPITAL of france"),
            record("What is the capital of Spain?"),
        ],
        index,
    )
    # a text shorter than n words is its own one gram, so the n-gram check agrees
    assert [(leak.index, leak.reasons, leak.eval_index) for leak in leaks.leaks] == [
        (0, ["exact", "ngram"], 0)
    ]
    assert leaks.counts == {"exact": 1, "ngram": 1, "embedding": 0, "any": 1}


def test_a_shared_13_gram_leaks_and_a_shared_12_gram_does_not():
    item = words(0, 30)
    shares_13 = f"{words(100, 5)} {words(10, 13)} {words(120, 5)}"
    shares_12 = f"{words(100, 5)} {words(10, 12)} {words(120, 5)}"
    index = EvalIndex([record(item)], ngram=13, cosine=0)
    result = find_leaks([record(shares_13), record(shares_12)], index)
    assert [(leak.index, leak.reasons) for leak in result.leaks] == [(0, ["ngram"])]
    at_12 = find_leaks([record(shares_12)], EvalIndex([record(item)], ngram=12, cosine=0))
    assert at_12.counts["ngram"] == 1  # n is a setting


def test_texts_shorter_than_n_compare_whole():
    short = words(0, 5)
    index = EvalIndex([record(short)], ngram=13, cosine=0)
    assert ngram_digests(short, 13) == ngram_digests(short.upper() + "!", 13)
    result = find_leaks([record(short + " w199"), record(words(0, 4))], index)
    assert result.leaks == []


def test_template_ngrams_shared_by_eval_items_do_not_count():
    options = "A under 50 B 50 to 99 C 100 to 149 D 150 or more"  # 15 words
    evals = [
        record(f"Mark where {a} + {b} lands.\n{options}", f"e{k}")
        for k, (a, b) in enumerate([(13, 96), (25, 75), (87, 17)])
    ]
    sibling = record(f"Which option holds 85 + 96?\n{options}")  # template and one number
    copy = record(f"mark where 13 + 96 lands {options}")
    index = EvalIndex(evals, cosine=0)
    assert index.template  # the options' 13-grams
    result = find_leaks([sibling, copy], index)
    assert [(leak.index, leak.reasons, leak.eval_index) for leak in result.leaks] == [
        (1, ["exact"], 0)
    ]
    naive = EvalIndex(evals, cosine=0, template_items=len(evals) + 1)  # no template filter
    assert find_leaks([sibling], naive).counts["ngram"] == 1
    long_content = f"{words(0, 20)} {options}"  # 20 item words outside the template
    evals.append(record(long_content, "e3"))
    copied = find_leaks([record(f"{words(0, 20)}?")], EvalIndex(evals, cosine=0))
    assert [(leak.reasons, leak.eval_index) for leak in copied.leaks] == [(["ngram"], 3)]


def test_embedding_threshold_catches_0_96_and_not_a_0_90_paraphrase():
    table = {"item": [1.0], "close": at_cosine(0.96), "paraphrase": at_cosine(0.90)}
    index = EvalIndex([record("item")], embedder=TableEmbedder(table), cosine=0.95)
    result = find_leaks([record("paraphrase"), record("close")], index)
    assert [(leak.index, leak.reasons) for leak in result.leaks] == [(1, ["embedding"])]
    assert result.leaks[0].cosine == pytest.approx(0.96, abs=1e-5)


def test_embedding_needs_more_than_the_items_own_sibling_similarity():
    table = {
        "item": [1.0],
        "sibling": at_cosine(0.98),  # another eval item of the same template
        "record": [0.96, 0.0, math.sqrt(1 - 0.96**2)],  # 0.96 to item, ~0.94 to sibling
        "copy": at_cosine(0.995),
    }
    index = EvalIndex(
        [record("item"), record("sibling", "s")], embedder=TableEmbedder(table), cosine=0.95
    )
    result = find_leaks([record("record"), record("copy")], index)
    assert [(leak.index, leak.eval_index) for leak in result.leaks] == [(1, 0)]


def test_cosine_zero_turns_the_embedding_check_off():
    table = {"item": [1.0], "close": at_cosine(0.99)}
    index = EvalIndex([record("item")], embedder=TableEmbedder(table), cosine=0)
    assert find_leaks([record("close")], index).leaks == []


def test_streaming_in_small_batches_matches_one_batch():
    rng = np.random.default_rng(0)
    evals = [record(words(10 * k, 14), f"e{k}") for k in range(6)]
    vectors = rng.normal(size=(40, 8))
    texts = [words(k, 14) if k % 3 else words(10 * (k % 6), 14).upper() for k in range(40)]
    table = {text: vec / np.linalg.norm(vec) for text, vec in zip(texts, vectors, strict=True)}
    for k, item in enumerate(evals):
        table[item.instruction] = table[texts[3 * k]] * 0.999 + 0.001 * vectors[k]
    embedder = TableEmbedder(table)
    index = EvalIndex(evals, embedder=embedder, cosine=0.9)
    pool = [record(text, str(k)) for k, text in enumerate(texts)]
    whole = find_leaks(pool, index, batch_size=1000)
    assert whole.counts["any"] >= 6 and whole.counts["embedding"] >= 1
    for size in (1, 3, 7):
        streamed = find_leaks((r for r in pool), index, batch_size=size)  # a generator
        assert streamed.checked == len(pool)
        assert [(x.index, x.matches) for x in streamed.leaks] == [
            (x.index, x.matches) for x in whole.leaks
        ]
        assert [x.cosine for x in streamed.leaks] == pytest.approx(
            [x.cosine for x in whole.leaks], abs=1e-5
        )
