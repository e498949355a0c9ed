"""Routing diagnostics of a mixture on an evaluation split, as `routing.json`.

Why a recipe: the run writes it beside each mixture's eval.json (through `run_evaluate`'s
`routing`, on the model evaluation loaded), `taskexpert evaluate --moe --routing` writes it on
request, and `taskexpert export` measures it again for a run from before it existed; all three
measure the same thing, here. The measurement itself is moe/routing.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

ROUTING_FILE = "routing.json"
ROUTING_FORMAT = 1  # part of the mixture eval stage's key: bump when routing.json changes


def measure_split_routing(model, tokenizer, records: Sequence, source: Path, batch_size: int = 16):
    """The routing report of `model` over the records' prompts and reference outputs; a
    collapse is logged as a warning naming `source` (the split's file)."""
    from taskexpert.moe.routing import measure_routing

    report = measure_routing(model, tokenizer, records, batch_size=batch_size)
    if report.warning:
        log.warning("%s: %s", source, report.warning)
    return report
