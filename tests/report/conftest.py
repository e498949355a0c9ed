"""One real micro run (tests/recipes/test_run.py's config, every step logged) shared by the
report tests: `taskexpert run` writes report.html at its end, and the tests read it back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from recipes.test_run import SMALL, micro_config


@pytest.fixture(scope="session")
def report_run(micro_testbed, tmp_path_factory) -> Path:
    """A finished micro run directory; treat it as read-only (copy it to change it)."""
    import torch

    from taskexpert.recipes.run import run_method

    out = tmp_path_factory.mktemp("report-run") / "run"
    config = micro_config(micro_testbed, train={**SMALL["train"], "log_every": 1})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared machine (conftest.one_torch_thread)
    try:
        run_method(config, out, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture()
def run_copy(report_run, tmp_path) -> Path:
    """A writable copy of the micro run, without its model weights (the report never reads
    them)."""
    target = tmp_path / "run"
    shutil.copytree(report_run, target, ignore=shutil.ignore_patterns("*.safetensors", ".lock"))
    return target


ROUTING = {
    "experts": ["expert_mc_add", "expert_list_sum"],
    "layers": ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"],
    "usage": [[0.75, 0.25], [0.5, 0.5]],
    "entropy": [0.562335, 0.693147],
    "max_entropy": 0.693147,
    "collapsed": False,
    "dominant_share": [0.75, 0.5],
    "warning": None,
    "tokens": 412,
}

LEAKAGE = {
    "checked": {"selected": 24, "kshot": 8, "eval": 6},
    "counts": {"exact": 1, "ngram": 2, "embedding": 0, "any": 2},
    "dropped": 2,
    "drop": True,
    "thresholds": {"ngram": 13, "cosine": 0.95},
    "examples": [
        {"source": "selected", "index": 3, "eval_index": 1, "reasons": ["exact", "ngram"]},
        {"source": "kshot", "index": 0, "eval_index": 4, "reasons": ["ngram"]},
    ],
}


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path
