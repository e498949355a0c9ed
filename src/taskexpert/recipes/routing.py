"""Routing diagnostics of a saved mixture on an evaluation split, as `routing.json`.

Why a recipe: the run writes it beside each mixture's eval.json and `taskexpert export` reads
it (or measures it again) to decide whether folding the mixture into one LoRA is safe; both
load the base and mixture the same way, here. The measurement is moe/routing.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

from taskexpert.recipes.common_options import LoadSettings

log = logging.getLogger(__name__)

ROUTING_FILE = "routing.json"
ROUTING_FORMAT = 1  # part of the moe eval stage's key: bump when routing.json changes


def load_mixture_model(base: str, moe: Path, runtime: LoadSettings, progress: bool = False):
    """(model with the mixture attached, tokenizer), loaded as the run's runtime says."""
    from taskexpert.models import load_base
    from taskexpert.moe import load_mixture

    model, tokenizer = load_base(
        base,
        dtype=runtime.dtype,
        device=runtime.device,
        trust_remote_code=runtime.trust_remote_code,
        allow_pickle=runtime.allow_pickle,
        progress=progress,
    )
    return load_mixture(model, moe).eval(), tokenizer


def measure_split_routing(model, tokenizer, test: Path, batch_size: int = 16):
    """The routing report of `model` over the test records' prompts and reference outputs."""
    from taskexpert.moe.routing import measure_routing
    from taskexpert.records import load_records

    report = measure_routing(model, tokenizer, load_records(test), batch_size=batch_size)
    if report.warning:
        log.warning("%s: %s", test, report.warning)
    return report


def write_routing(
    base: str,
    moe: Path,
    test: Path,
    out: Path,
    runtime: LoadSettings,
    batch_size: int = 16,
    progress: bool = False,
):
    """Measure the mixture's routing on `test` and write routing.json to `out`; the report."""
    from taskexpert.io import write_json

    model, tokenizer = load_mixture_model(base, moe, runtime, progress)
    report = measure_split_routing(model, tokenizer, test, batch_size)
    write_json(out, report.to_json())
    return report
