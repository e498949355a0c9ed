"""`taskexpert report RUN_DIR`: report.html (self-contained) and report.md beside the verdict.

Why a recipe: `taskexpert run` writes the report at its end, and a user can rebuild it for an
old run directory (or a DiverseEvol one) after the fact; both go through `run_report`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from taskexpert.io import atomic_open

HTML_FILE = "report.html"
MARKDOWN_FILE = "report.md"

log = logging.getLogger(__name__)


class ReportConfig(BaseModel):
    """Where the report goes (its data, RUN_DIR, is the verb's argument)."""

    model_config = ConfigDict(extra="forbid")

    out: Path | None = Field(
        None, description="Folder for report.html and report.md (default: RUN_DIR itself)."
    )


def run_report(run_dir: str | Path, config: ReportConfig | None = None) -> tuple[Path, Path]:
    """Read `run_dir`, write report.html and report.md atomically; their paths."""
    from taskexpert.report.collect import collect
    from taskexpert.report.render import to_html, to_markdown
    from taskexpert.report.sections import build_sections

    config = config or ReportConfig()
    run_dir = Path(run_dir)
    data = collect(run_dir)
    sections = build_sections(data)
    kind = "taskexpert run" if data.provenance is not None else "DiverseEvol run"
    title = f"{kind} report: {run_dir.resolve().name}"
    subtitle = str(run_dir.resolve())
    out = Path(config.out) if config.out is not None else run_dir
    html_path, md_path = out / HTML_FILE, out / MARKDOWN_FILE
    with atomic_open(html_path) as handle:
        handle.write(to_html(sections, title, subtitle))
    with atomic_open(md_path) as handle:
        handle.write(to_markdown(sections, title, subtitle))
    return html_path, md_path


def write_run_report(run_dir: Path) -> Path | None:
    """`taskexpert run`'s last step: the report, or None after logging why it failed (the
    verdict is already written; a plotting problem must not turn a finished run into an
    error). A report left from an earlier run is removed then, so none describes old stages."""
    try:
        return run_report(run_dir)[0]
    except Exception:  # noqa: BLE001 - any failure here is reported, never fatal
        for name in (HTML_FILE, MARKDOWN_FILE):
            (Path(run_dir) / name).unlink(missing_ok=True)
        log.exception("the run's report could not be written; retry: taskexpert report %s",
                      run_dir)  # fmt: skip
        return None
