"""Leakage check: training records that reproduce an evaluation item (design.md "Leakage check").

Why: a selected pool record (or a K-shot record) that is an evaluation item in disguise lets a
method score by memory, and the selection step is built to find records *like* the evaluation
items, so it finds copies first. Three checks, each on the records' `prompt_text`
(instruction + input): the question is what identifies an item; its answer is often a letter
or a number that thousands of unrelated items share, and a leaked question answered in another
style is still a leak.

- exact: equal after `normalize`.
- ngram: a shared word n-gram (n = 13, the GPT-3 / lm-eval decontamination convention); a
  text shorter than n words is one gram, its whole text. Template text is cut out first: an
  n-gram found in `template_items` or more evaluation items cannot point to one item, and in
  templated tasks (the testbed, multiple-choice option lists) every item of the task shares
  it. Its words split a text into runs, and only n-grams inside a run count, so a gram made of
  an option list plus one number of the question does not match either (measured on the micro
  testbed: without this, every mc_add_quiz K-shot record and 23 pool records were flagged).
- embedding: cosine >= `cosine` between the sentence-encoder vectors (the encoder select-data
  uses), searched with a FAISS inner-product index of the evaluation side, and higher than the
  item's cosine to its nearest other evaluation item: MiniLM barely sees numbers, so two items
  of one template with other numbers score above 0.95, and a record no closer to an item than
  the item's own siblings are is a sibling, not a copy (2 of mc_add_quiz's 8 K-shot records
  scored 0.953 and 0.958 against test items of their template; with this rule 1 remains).

Memory is O(eval + batch): the evaluation side (hashes, n-gram hashes, vectors) is held, the
checked records stream through in batches, so a whole pool can be checked.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from taskexpert.records import Record

if TYPE_CHECKING:
    from taskexpert.embed import Embedder, EmbeddingCache

CHECKS = ("exact", "ngram", "embedding")
_SPACE = re.compile(r"\s+")


class LeakageConfig(BaseModel):
    """The run's leakage check between the training data and the evaluation split."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        True,
        description="Before training, compare the prompts (instruction + input) of the "
        "selected data and the K-shot with the evaluation items'.",
    )
    drop: bool = Field(
        True,
        description="Train without the leaked records (false: only count them and warn).",
    )
    ngram: int = Field(
        13, ge=1, description="Word n-gram length of the overlap check (GPT-3, lm-eval: 13)."
    )
    template_items: int = Field(
        2,
        ge=2,
        description="An n-gram in at least this many evaluation items is template text, "
        "not evidence of one item, and is ignored.",
    )
    cosine: float = Field(
        0.95,
        ge=0,
        le=1,
        description="Embedding cosine (select_data's encoder) at or above which a record "
        "leaks, when it is also closer to the item than any other evaluation item is (0 turns "
        "the check off).",
    )
    batch_size: int = Field(
        1024, ge=1, description="Records checked per batch (memory stays O(batch + eval))."
    )


class _PunctuationToSpace(dict):
    """A `str.translate` table filled on first sight of each character: punctuation (Unicode
    P*) maps to a space, anything else to itself, so later lookups stay in C."""

    def __missing__(self, code: int) -> str:
        char = chr(code)
        self[code] = " " if unicodedata.category(char).startswith("P") else char
        return self[code]


_PUNCTUATION_TO_SPACE = _PunctuationToSpace()


def normalize(text: str) -> str:
    """NFKC, lowercase, punctuation (Unicode P*) to spaces, whitespace collapsed.

    Why each: NFKC folds full-width and ligature forms a copy-paste or a converter introduces;
    case, punctuation and spacing change when a dataset is re-templated or re-tokenised, but
    do not make a different question. Symbols (+, =, <, $) stay: "3 + 4" and "3 = 4" differ."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.translate(_PUNCTUATION_TO_SPACE)
    return _SPACE.sub(" ", text).strip()


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


def _grams(words: list[str], n: int) -> list[bytes]:
    return [_digest(" ".join(words[i : i + n])) for i in range(len(words) - n + 1)]


def ngram_digests(text: str, n: int, template: set[bytes] | frozenset[bytes] = frozenset()
                  ) -> set[bytes]:  # fmt: skip
    """Hashes of the word n-grams of normalised `text` that lie inside runs of words not
    covered by a `template` gram; a text shorter than n words is one gram, itself."""
    return _content_grams(normalize(text).split(), n, template)


def _content_grams(words: list[str], n: int, template: set[bytes] | frozenset[bytes]
                   ) -> set[bytes]:  # fmt: skip
    if len(words) < n:
        return {_digest(" ".join(words))} if words else set()
    grams = _grams(words, n)
    if not template:
        return set(grams)
    covered = np.zeros(len(words) + 1, dtype=np.int32)  # +1/-1 at each template gram's ends
    for start, gram in enumerate(grams):
        if gram in template:
            covered[start] += 1
            covered[start + n] -= 1
    free = np.cumsum(covered[:-1]) == 0
    kept: set[bytes] = set()
    run = 0
    for end in range(len(words)):  # a gram counts when its n words are all free
        run = run + 1 if free[end] else 0
        if run >= n:
            kept.add(grams[end - n + 1])
    return kept


@dataclass(frozen=True)
class Leak:
    """One leaked record: its position in the checked sequence and, per check that fired, the
    evaluation item it matched (the first such item for exact and n-gram, the nearest for
    embedding)."""

    index: int
    matches: dict[str, int]
    cosine: float | None = None

    @property
    def reasons(self) -> list[str]:
        return [check for check in CHECKS if check in self.matches]

    @property
    def eval_index(self) -> int:
        """The evaluation item of the strongest check (exact, then n-gram, then embedding)."""
        return self.matches[self.reasons[0]]


@dataclass
class LeakageResult:
    """The leaks among `checked` records, in record order."""

    checked: int
    leaks: list[Leak] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Records caught by each check (one record may count under several) and by any."""
        counts = {check: sum(check in leak.matches for leak in self.leaks) for check in CHECKS}
        return {**counts, "any": len(self.leaks)}

    @property
    def leaked(self) -> set[int]:
        return {leak.index for leak in self.leaks}


class EvalIndex:
    """The evaluation side, held in memory: normalised-text hashes, the template grams, each
    item's content n-gram hashes, and unit-length embeddings with each item's cosine to its
    nearest other item."""

    def __init__(
        self,
        eval_records: Sequence[Record],
        *,
        ngram: int = 13,
        template_items: int = 2,
        cosine: float = 0.95,
        embedder: Embedder | None = None,
        cache: EmbeddingCache | None = None,
        progress: bool = False,
    ) -> None:
        self.size = len(eval_records)
        self.ngram = ngram
        self.cosine = cosine
        self.embedder = embedder if cosine > 0 else None
        self.cache = cache
        self.progress = progress
        texts = [r.prompt_text for r in eval_records]
        self.exact: dict[bytes, int] = {}
        for k, text in enumerate(texts):
            self.exact.setdefault(_digest(normalize(text)), k)
        items_with: dict[bytes, int] = {}
        for text in texts:
            for gram in ngram_digests(text, ngram):
                items_with[gram] = items_with.get(gram, 0) + 1
        self.template = {g for g, count in items_with.items() if count >= template_items}
        self.grams: dict[bytes, int] = {}
        for k, text in enumerate(texts):
            for gram in ngram_digests(text, ngram, self.template):
                self.grams.setdefault(gram, k)
        self.index = None
        self.sibling = np.full(self.size, -np.inf, dtype=np.float32)
        if self.embedder is not None and self.size:
            import faiss

            vectors = self._embed(texts)
            self.index = faiss.IndexFlatIP(vectors.shape[1])
            self.index.add(vectors)
            if self.size > 1:
                for start in range(0, self.size, 1024):  # the nearest other item, per item
                    block = vectors[start : start + 1024]
                    scores, rows = self.index.search(block, 2)
                    own = rows == np.arange(start, start + len(block))[:, None]
                    other = np.where(own[:, 0], scores[:, 1], scores[:, 0])
                    self.sibling[start : start + len(block)] = other

    def _embed(self, texts: list[str]) -> np.ndarray:
        from taskexpert.embed import embed_texts, l2_normalize

        return l2_normalize(embed_texts(texts, self.embedder, self.cache, None, self.progress))

    def _nearest(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per text, the most similar item it is closer to than that item's nearest sibling
        (-1 if none reaches the threshold), and its cosine."""
        nearest = np.full(len(texts), -1, dtype=np.int64)
        cosines = np.full(len(texts), np.nan, dtype=np.float32)
        if self.index is None or not texts:
            return nearest, cosines
        depth = min(self.size, 16)
        scores, rows = self.index.search(self._embed(texts), depth)
        cosines[:] = scores[:, 0]
        # a small slack: one text embedded in two batches may differ in the last bits
        hits = (scores >= self.cosine - 1e-6) & (scores > self.sibling[rows] + 1e-6)
        for k in np.flatnonzero(hits.any(axis=1)):
            first = int(np.argmax(hits[k]))
            nearest[k], cosines[k] = rows[k, first], scores[k, first]
        return nearest, cosines

    def check_batch(self, records: Sequence[Record], offset: int = 0) -> list[Leak]:
        """The leaks among one batch; `offset` is the batch's position in the whole sequence."""
        texts = [r.prompt_text for r in records]
        nearest, cosines = self._nearest(texts)
        leaks = []
        for k, text in enumerate(texts):
            matches: dict[str, int] = {}
            normal = normalize(text)
            exact = self.exact.get(_digest(normal))
            if exact is not None:
                matches["exact"] = exact
            content = _content_grams(normal.split(), self.ngram, self.template)
            shared = [self.grams[g] for g in content if g in self.grams]
            if shared:
                matches["ngram"] = min(shared)
            if nearest[k] >= 0:
                matches["embedding"] = int(nearest[k])
            if matches:
                cosine = None if np.isnan(cosines[k]) else float(cosines[k])
                leaks.append(Leak(offset + k, matches, cosine))
        return leaks


def _batches(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def find_leaks(
    records: Iterable[Record], index: EvalIndex, batch_size: int = 1024
) -> LeakageResult:
    """Check `records` (any iterable, streamed in batches) against the evaluation `index`."""
    result = LeakageResult(checked=0)
    for batch in _batches(records, batch_size):
        result.leaks.extend(index.check_batch(batch, offset=result.checked))
        result.checked += len(batch)
    return result
