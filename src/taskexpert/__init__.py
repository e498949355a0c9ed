"""taskexpert: K-shot guided task experts from open LoRA banks and open instruction data."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskexpert.errors import InputError, TaskexpertError
from taskexpert.records import Record, read_records, write_records

if TYPE_CHECKING:
    from taskexpert.recipes.run_config import RunConfig
    from taskexpert.verdict import Verdict

__version__ = "0.1.0"
__all__ = ["InputError", "Record", "TaskexpertError", "read_records", "run", "write_records"]


def run(
    config: str | Path | RunConfig | dict[str, Any],
    out: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
) -> Verdict:
    """`taskexpert run` from Python: a config file, a RunConfig or its dict; the Verdict.

    `out` defaults to runs/<config file name> (runs/run for a config given as an object);
    a dict's relative paths are read from the current directory."""
    from taskexpert.recipes.run import run_method
    from taskexpert.recipes.run_config import RunConfig, load_run_config

    if isinstance(config, str | Path):
        name = Path(config).stem
        config = load_run_config(config)
    else:
        name = "run"
        if isinstance(config, dict):
            config = RunConfig.model_validate(config).resolved(Path.cwd())
    out = Path(out) if out is not None else Path("runs") / name
    return run_method(config, out, resume=resume, progress=progress).verdict
