"""Records of a JSONL file by index, holding only where each line starts.

Why: DiverseEvol trains on a few thousand records of a pool that may hold millions, and walks
the whole pool only to embed it, batch by batch. A list of parsed records costs a few KB per
record (a 52k pool about 0.3 GB, millions several GB); the line offsets cost 8 bytes each.
The file is validated whole when opened, as `load_records` does (the first bad line raises,
naming it; a duplicate id names both lines), and a file changed after that is refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np

from taskexpert.errors import InputError
from taskexpert.records import Record, load_records, parse_json_line, parse_record
from taskexpert.textfile import decode_error

_BOM = b"\xef\xbb\xbf"


class RecordFile(Sequence[Record]):
    """The records of one JSONL file, read from disk on each access (one line per record)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError("file not found or not a regular file", self.path)
        offsets: list[int] = []
        lines: list[int] = []
        seen: dict[str, int] = {}
        for number, offset, record in self._scan():
            if record.id in seen:
                raise InputError(
                    f"duplicate id {record.id!r} (first on line {seen[record.id]})",
                    self.path, number, "id",
                )  # fmt: skip
            seen[record.id] = number
            offsets.append(offset)
            lines.append(number)
        if not offsets:
            raise InputError("no records", self.path)
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._lines = np.asarray(lines, dtype=np.int64)
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int]:
        stat = self.path.stat()
        return stat.st_size, stat.st_mtime_ns

    def _decode(self, raw: bytes, offset: int) -> str:
        if offset == 0 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise decode_error(self.path, exc) from None

    def _scan(self) -> Iterator[tuple[int, int, Record]]:
        """(line number, byte offset, record) of every non-blank line, validated."""
        offset = 0
        with open(self.path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                text = self._decode(raw, offset)
                if text.strip():
                    obj = parse_json_line(text, self.path, number)
                    yield number, offset, parse_record(obj, self.path, number)
                offset += len(raw)

    def _read(self, handle, index: int) -> Record:
        offset, number = int(self._offsets[index]), int(self._lines[index])
        handle.seek(offset)
        text = self._decode(handle.readline(), offset)
        return parse_record(parse_json_line(text, self.path, number), self.path, number)

    def _check_unchanged(self) -> None:
        if self._stat() != self._stamp:
            raise InputError(
                "changed since it was opened (size or modification time); a run reads its "
                "pool as it was when it started, so rerun to read the new one",
                self.path,
            )

    def __len__(self) -> int:
        return len(self._offsets)

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> list[Record]: ...

    def __getitem__(self, index: int | slice) -> Record | list[Record]:
        self._check_unchanged()
        if isinstance(index, slice):
            with open(self.path, "rb") as handle:
                return [self._read(handle, i) for i in range(*index.indices(len(self)))]
        position = index + len(self) if index < 0 else index
        if not 0 <= position < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        with open(self.path, "rb") as handle:
            return self._read(handle, position)

    def take(self, indices: Sequence[int]) -> list[Record]:
        """The records at `indices`, in that order, through one open file."""
        self._check_unchanged()
        with open(self.path, "rb") as handle:
            return [self._read(handle, int(i)) for i in indices]

    def __iter__(self) -> Iterator[Record]:
        self._check_unchanged()
        with open(self.path, "rb") as handle:
            for index in range(len(self)):
                yield self._read(handle, index)


def open_records(path: str | Path) -> Sequence[Record]:
    """A file's records as a sequence: JSONL read by index from disk (RecordFile); JSON lists
    and Parquet, which have no lines to seek to, loaded whole."""
    if Path(path).suffix.lower() in (".json", ".parquet"):
        return load_records(path)
    return RecordFile(path)


def take(records: Sequence[Record], rows: Sequence[int]) -> list[Record]:
    """`records[i]` for each of `rows`, in order (through one open file for a RecordFile)."""
    if isinstance(records, RecordFile):
        return records.take(rows)
    return [records[int(i)] for i in rows]
