"""Atomic writes: an artifact appears whole or not at all (temp file beside it, then rename).

Temp names are `.<name>.<random>.tmp` beside the final path (`is_temp_name`), so a process
killed mid-write leaves at most a hidden `.tmp` entry, never a half-written file or directory
under a final name. Replacing or removing a directory moves it to a temp name first.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from taskexpert.errors import InputError

TEMP_SUFFIX = ".tmp"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output(path: str | Path, field: str | None = "out", directory: bool = False) -> None:
    """Fail before any work when `path` could not be written: a file output that is a folder,
    or a nearest existing folder above it that is a file (the usual way to hit this as root)
    or is not writable. `directory`: the output is a folder (replaced or resumed by its verb)."""
    path = Path(path)
    if not directory and path.is_dir():
        raise InputError("output path is a directory", path, None, field)
    if directory and path.exists() and not path.is_dir():
        raise InputError("output path exists and is not a directory", path, None, field)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(
            f"cannot create it: {ancestor} is a file, not a directory", path, None, field
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"cannot create it: {ancestor} is not writable", path, None, field)


@contextlib.contextmanager
def _creating(path: Path) -> Iterator[None]:
    """OSErrors while making `path`'s folder or temp file are bad output paths, not crashes."""
    try:
        yield
    except OSError as exc:
        check_output(path, None)  # names the file in the way, if that is the reason
        raise InputError(f"cannot write it ({exc.strerror or exc})", path) from None


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temp file beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    with _creating(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; artifacts are ordinary files
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_open(path) as handle:
        json.dump(obj, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


def is_temp_name(name: str) -> bool:
    """True for the names atomic_open, atomic_dir and remove_tree use while they work."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def _aside(path: Path) -> Path:
    """A fresh temp name beside `path` (not created)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old{TEMP_SUFFIX}")


def remove_tree(path: str | Path) -> None:
    """Delete a directory so that a kill never leaves it half-deleted under its own name: it is
    renamed to a temp name first (one atomic step), then deleted."""
    path = Path(path)
    if not path.exists():
        return
    aside = _aside(path)
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temp name and rename it into place on success.

    A directory already at `path` is first renamed aside (and deleted afterwards), so `path`
    only ever holds the old directory whole, nothing, or the new one whole; a kill between
    the two renames leaves nothing, which readers treat like a run that never got that far.
    """
    path = Path(path)
    with _creating(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent))
    old = None
    try:
        yield tmp
        if path.exists():
            old = _aside(path)
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        if old is not None and not path.exists():
            os.replace(old, path)  # the new one never landed: put the old one back
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
