"""The run's leakage stage: check the selected data and the K-shot against the evaluation split,
write `leakage.json` and, when dropping, the cleaned training files.

Why a stage of its own, between select-data and training: the check's result is a fact about
the run (it goes into the manifest and the report), and training must read the cleaned files,
so they are an artifact with a key like any other. The K-shot that select-experts and
select-data used is not changed: only what the models train on is cleaned.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from taskexpert.errors import InputError
from taskexpert.io import write_json
from taskexpert.records import Record, load_records, read_records, write_records
from taskexpert.selection.leakage import LeakageConfig, LeakageResult

log = logging.getLogger(__name__)

LEAKAGE_FILE = "leakage.json"
SELECTED_FILE = "selected.jsonl"
KSHOT_FILE = "kshot.jsonl"
MAX_EXAMPLES = 20  # leakage.json lists this many leaked records; the counts cover all


def check_training_data(
    test: Path,
    kshot: Path,
    selected: Path | None,
    out: Path,
    settings: LeakageConfig,
    *,
    encoder: str = "auto",
    device: str = "auto",
    cache_dir: Path | None = None,
    use_cache: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Write `out/leakage.json` and, with `settings.drop`, the cleaned `out/selected.jsonl` and
    `out/kshot.jsonl` of each file with leaked records; returns leakage.json's content."""
    from taskexpert.embed import EmbeddingCache, resolve_embedder
    from taskexpert.selection.leakage import EvalIndex, find_leaks

    eval_records = load_records(test)
    embedder = resolve_embedder(encoder, device=device) if settings.cosine > 0 else None
    index = EvalIndex(
        eval_records,
        ngram=settings.ngram,
        template_items=settings.template_items,
        cosine=settings.cosine,
        embedder=embedder,
        cache=EmbeddingCache(cache_dir) if use_cache and embedder is not None else None,
        progress=progress,
    )
    results = {"selected": LeakageResult(checked=0), "kshot": LeakageResult(checked=0)}
    if selected is not None:
        results["selected"] = find_leaks(read_records(selected), index, settings.batch_size)
    results["kshot"] = find_leaks(load_records(kshot), index, settings.batch_size)
    dropped = 0
    if settings.drop:
        if selected is not None and results["selected"].leaks:
            dropped += _write_kept(read_records(selected), results["selected"], out, selected)
        if results["kshot"].leaks:
            dropped += _write_kept(read_records(kshot), results["kshot"], out, kshot, KSHOT_FILE)
    summary = leakage_summary(results, len(eval_records), dropped, settings)
    write_json(out / LEAKAGE_FILE, summary)
    return summary


def _write_kept(records: Iterable[Record], result: LeakageResult, out: Path, source: Path,
                name: str = SELECTED_FILE) -> int:  # fmt: skip
    """Write the records that did not leak to `out/name`; how many were left out."""
    leaked = result.leaked
    if len(leaked) == result.checked:
        raise InputError(
            "every record is an evaluation item (leakage check): nothing left to train on; "
            "is the test file the same data?",
            source,
        )
    write_records(out / name, (r for k, r in enumerate(records) if k not in leaked))
    return len(leaked)


def leakage_summary(results: dict[str, LeakageResult], eval_size: int, dropped: int,
                    settings: LeakageConfig) -> dict[str, Any]:  # fmt: skip
    """leakage.json: counts over both sources, and the first leaks (K-shot ones first)."""
    counts = {key: 0 for key in ("exact", "ngram", "embedding", "any")}
    for result in results.values():
        for key, value in result.counts.items():
            counts[key] += value
    examples = [
        {
            "source": source,
            "index": leak.index,
            "eval_index": leak.eval_index,
            "reasons": leak.reasons,
        }  # fmt: skip
        for source in ("kshot", "selected")
        for leak in results[source].leaks
    ]
    return {
        "checked": {
            "selected": results["selected"].checked,
            "kshot": results["kshot"].checked,
            "eval": eval_size,
        },
        "counts": counts,
        "dropped": dropped,
        "drop": settings.drop,
        "thresholds": {"ngram": settings.ngram, "cosine": settings.cosine},
        "examples": examples[:MAX_EXAMPLES],
    }


def training_inputs(directory: Path, kshot: Path, selected: Path | None
                    ) -> tuple[Path, Path | None]:  # fmt: skip
    """The K-shot and selected files training reads: the cleaned ones where the stage wrote
    them, else the originals."""
    cleaned_kshot = directory / KSHOT_FILE
    cleaned_selected = directory / SELECTED_FILE
    return (
        cleaned_kshot if cleaned_kshot.is_file() else kshot,
        cleaned_selected if selected is not None and cleaned_selected.is_file() else selected,
    )


def report_leaks(summary: dict[str, Any]) -> None:
    """Log the counts; a warning when leaked records stay in the training data."""
    counts = summary["counts"]
    if not counts["any"]:
        log.info("leakage: no training record matches an evaluation item")
        return
    found = (
        f"{counts['any']} training records match evaluation items (exact {counts['exact']}, "
        f"{summary['thresholds']['ngram']}-gram {counts['ngram']}, embedding "
        f"{counts['embedding']})"
    )
    if summary["drop"]:
        log.info("leakage: %s; %d dropped from training", found, summary["dropped"])
    else:
        log.warning("leakage: %s; kept because leakage.drop is false", found)
