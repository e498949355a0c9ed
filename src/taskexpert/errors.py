"""One exception family, so the CLI can turn any user-facing failure into a one-line message."""

from __future__ import annotations

from pathlib import Path


class TaskexpertError(Exception):
    """A failure the user can act on; the CLI prints it on one line and exits non-zero."""


class InputError(TaskexpertError):
    """Bad input: names the file, the line (1-based) or record, and the field when known."""

    def __init__(
        self,
        message: str,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path, self.line, self.field, self.reason = path, line, field, message
        where = []
        if path is not None:
            where.append(str(path) + (f":{line}" if line is not None else ""))
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{': '.join(where)}: {message}" if where else message)
