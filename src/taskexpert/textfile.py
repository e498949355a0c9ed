"""Reading user text files: UTF-8 only (a byte-order mark is fine), and errors that say where.

Text mode reports a decoding error by its offset in a read buffer, which the user cannot act
on; `decode_error` re-reads the file as bytes to name the line. `check_encodable` catches the
one thing valid UTF-8 JSON can still smuggle in, a lone surrogate escape (`"\\ud800"`), which
would only fail later, when the records are written out.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import IO, Any

from taskexpert.errors import InputError

ENCODING = "utf-8-sig"  # UTF-8, with an optional BOM (Excel and Notepad write one) dropped
_NEWLINE = re.compile(rb"\r\n|\r|\n")  # the line breaks of Python's universal newlines
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def open_text(path: Path, newline: str | None = None) -> IO[str]:
    """`path` opened for reading as UTF-8 text, a leading BOM skipped."""
    return open(path, encoding=ENCODING, newline=newline)


def decode_error(path: Path, exc: UnicodeDecodeError) -> InputError:
    """The InputError for a file that is not UTF-8: its encoding if a BOM tells, else the line."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
            for bom, name in _BOMS:
                if head.startswith(bom):
                    return InputError(f"not UTF-8 text ({name}; save it as UTF-8)", path, 1)
            handle.seek(0)
            line = 1
            for raw in handle:
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as bad:
                    breaks = list(_NEWLINE.finditer(raw, 0, bad.start))
                    column = bad.start - (breaks[-1].end() if breaks else 0) + 1
                    reason = f"{bad.reason}: byte 0x{raw[bad.start]:02x} at column {column}"
                    return InputError(f"not UTF-8 text ({reason})", path, line + len(breaks))
                line += len(_NEWLINE.findall(raw))
    except OSError:
        pass
    return InputError(f"not UTF-8 text ({exc.reason})", path)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unencodable_field(obj: Any) -> str | None:
    """Dotted path ('' for the top) of the first string, value or key, that UTF-8 cannot encode.

    Iterative, as the JSON parser accepts nesting deeper than a recursive walk could follow.
    """
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            if not _encodable(value):
                return where
            continue
        if isinstance(value, dict):
            items: Any = value.items()
        elif isinstance(value, list):
            items = enumerate(value)
        else:
            continue
        children = []
        for key, child in items:
            name = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and not _encodable(key):
                return name.encode("utf-8", "backslashreplace").decode("utf-8")
            children.append((name, child))
        stack.extend(reversed(children))
    return None


def is_encodable(obj: Any) -> bool:
    """Whether every string in `obj` (e.g. an argument decoded with surrogateescape) is Unicode."""
    return _unencodable_field(obj) is None


def has_surrogate_escape(text: str) -> bool:
    """Whether JSON `text` may decode to a lone surrogate: a cheap filter before the walk."""
    return _SURROGATE_ESCAPE.search(text) is not None


def check_encodable(obj: Any, path: Path, line: int | None) -> None:
    """Raise if decoded JSON `obj` holds a string UTF-8 cannot encode (a lone surrogate)."""
    field = _unencodable_field(obj)
    if field is not None:
        msg = "lone UTF-16 surrogate (\\ud800-\\udfff): not valid Unicode"
        raise InputError(msg, path, line, field or None)
