"""Embedding shards: row ranges of .npy files that actors memory-map, and the shard directory
the Ray embedding writes (`shard-NNNNN.npy` files plus `index.json`).

A shard directory's index lists every planned shard with its first global row, its row count
and the sha1 of its texts; a shard counts as finished when its .npy exists with that many rows
(files are written under a temp name and renamed, so a killed run leaves none half-written).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from taskexpert.errors import InputError
from taskexpert.io import atomic_open, write_json

INDEX_FILE = "index.json"
INDEX_VERSION = 1


@dataclass(frozen=True)
class Shard:
    """Rows `lo .. lo + rows` of one .npy file (or of an in-memory array sent through Ray),
    rows `start .. start + rows` of the whole matrix."""

    source: Any  # a path to a .npy file, or an array / Ray object reference
    start: int
    rows: int
    lo: int = 0

    @property
    def stop(self) -> int:
        return self.start + self.rows

    def open(self) -> np.ndarray:
        """The shard's rows, memory-mapped when it lives in a file."""
        if isinstance(self.source, (str, Path)):
            return np.load(self.source, mmap_mode="r")[self.lo : self.lo + self.rows]
        return self.source[self.lo : self.lo + self.rows]


def split_rows(n: int, parts: int, align: int = 1) -> list[tuple[int, int]]:
    """`parts` contiguous (start, stop) ranges covering n rows, near-equal, each start a
    multiple of `align` (so a shard streams the very chunks one process would)."""
    parts = max(1, min(parts, n))
    bounds = [0]
    for k in range(1, parts):
        cut = round(n * k / parts / align) * align
        if bounds[-1] < cut < n:
            bounds.append(cut)
    bounds.append(n)
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


def matrix_shards(matrix: np.ndarray, parts: int, align: int = 1) -> list[Shard]:
    """A matrix cut into shards: file ranges of a memmap, else slices of the array."""
    filename = getattr(matrix, "filename", None)
    if isinstance(matrix, np.memmap) and filename and matrix.offset is not None:
        whole = np.load(filename, mmap_mode="r")
        if whole.shape == matrix.shape and whole.dtype == matrix.dtype:
            return [
                Shard(str(filename), lo, hi - lo, lo)
                for lo, hi in split_rows(len(matrix), parts, align)
            ]
    return [Shard(matrix[lo:hi], lo, hi - lo) for lo, hi in split_rows(len(matrix), parts, align)]


def text_digest(texts: list[str]) -> str:
    """sha1 over a shard's texts: a rerun reuses a shard only for the same texts."""
    h = hashlib.sha1()
    for text in texts:
        h.update(hashlib.sha1(text.encode("utf-8")).digest())
    return h.hexdigest()


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.npy"


def npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a .npy header, without reading the data."""
    with open(path, "rb") as handle:
        major, _ = np.lib.format.read_magic(handle)
        read = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(handle)
    return shape, dtype


def write_shard(directory: Path, k: int, vectors: np.ndarray) -> Path:
    """Shard k written whole or not at all."""
    path = Path(directory) / shard_name(k)
    with atomic_open(path, "wb", encoding=None) as handle:
        np.save(handle, np.ascontiguousarray(vectors, dtype=np.float32))
    return path


def write_index(directory: Path, encoder: str, entries: list[dict]) -> None:
    rows = sum(e["rows"] for e in entries)
    write_json(
        Path(directory) / INDEX_FILE,
        {"version": INDEX_VERSION, "encoder": encoder, "rows": rows, "shards": entries},
    )


def read_index(directory: Path) -> dict | None:
    """The index, or None when absent or unreadable (the plan is then written afresh)."""
    try:
        data = json.loads((Path(directory) / INDEX_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == INDEX_VERSION else None


def finished(directory: Path, entry: dict) -> bool:
    """Shard file present with its planned row count."""
    path = Path(directory) / entry["file"]
    try:
        shape, _ = npy_shape(path)
    except (OSError, ValueError):
        return False
    return len(shape) == 2 and shape[0] == entry["rows"]


def open_shards(directory: Path) -> tuple[list[Shard], int]:
    """Every shard of a finished directory and the common dimension; a missing shard, a row
    count unlike the index's or a dimension unlike the first shard's is an InputError naming
    the shard file."""
    directory = Path(directory)
    index = read_index(directory)
    if index is None:
        raise InputError(f"no readable {INDEX_FILE}: not a shard directory", directory)
    shards: list[Shard] = []
    dim: int | None = None
    first = None
    for entry in index["shards"]:
        path = directory / entry["file"]
        try:
            shape, dtype = npy_shape(path)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the shard: {exc}", path) from None
        if len(shape) != 2 or shape[0] != entry["rows"]:
            raise InputError(
                f"shape {shape} does not hold the {entry['rows']} rows the index lists", path
            )
        if dtype not in (np.float32, np.float16):
            raise InputError(f"dtype {dtype} is not float32 or float16", path)
        if dim is None:
            dim, first = shape[1], path
        elif shape[1] != dim:
            raise InputError(
                f"dimension {shape[1]} differs from {dim} in {first.name}", path, field="dim"
            )
        shards.append(Shard(str(path), entry["start"], entry["rows"]))
    if not shards:
        raise InputError("the index lists no shards", directory)
    return shards, int(dim)
