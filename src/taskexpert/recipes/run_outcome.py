"""What a run hands back: per-item scores from eval.json and the winner, copied to final/.

Why apart: how a method is scored per item and which of its seeds is handed to the user are
decisions a reader should find in one place.
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Any

from taskexpert.errors import InputError
from taskexpert.io import atomic_dir, write_json
from taskexpert.verdict import Verdict

WINNER_FILE = "winner.json"


def item_scores(report: dict, metric: str) -> list[float]:
    """One 0/1 score per test item: option scoring where a record has choices (auto)."""
    scores = []
    for prediction in report["predictions"]:
        if metric == "multiple_choice" or (metric == "auto" and "mc_correct" in prediction):
            if "mc_correct" not in prediction:
                raise InputError(
                    f"record {prediction['id']!r} has no choices to score "
                    "(evaluate.metric: multiple_choice)",
                    field="evaluate.metric",
                )
            scores.append(float(prediction["mc_correct"]))
        else:
            scores.append(float(prediction["correct"]))
    return scores


def representative_seed(scores: dict[int | None, float]) -> int | None:
    """The seed whose score is the median of the method's seeds (no cherry-picking the best
    seed on the test items)."""
    middle = statistics.median_low(scores.values())
    return next(seed for seed, score in scores.items() if score == middle)


def winner_evidence(verdict: Verdict) -> dict[str, Any]:
    """What the verdict says of the winner, kept beside it: whoever copies final/ elsewhere
    also copies its score and why it may not be worth deploying (`cautions`)."""
    row = next(m for m in verdict.methods if m.method == verdict.winner)
    against = verdict.versus_base
    return {
        "mean": row.mean,
        "interval": [row.low, row.high],
        "confidence": verdict.confidence,
        "n_items": verdict.n_items,
        "versus_base": against.model_dump() if against is not None else None,
        "clears_floor": None if verdict.floor is None else verdict.floor.beats,
        "cautions": verdict.cautions,
    }


def write_final(final: Path, base: str, verdict: Verdict, seed: int | None, models: dict) -> Path:
    """The winner in a form PEFT or taskexpert loads back, with winner.json saying how and
    what the verdict says of it."""
    winner = verdict.winner
    model = models[(winner, seed)]
    with atomic_dir(final) as tmp:
        info: dict[str, Any] = {"method": winner, "seed": seed, "base": base}
        if model.get("adapter"):
            shutil.copytree(model["adapter"], tmp / "adapter")
            info["load"] = "PeftModel.from_pretrained(base_model, 'final/adapter')"
            info["kind"] = "peft-lora"
        elif model.get("moe"):
            shutil.copytree(model["moe"], tmp / "moe")
            info["load"] = "taskexpert.moe.load_mixture(base_model, 'final/moe')"
            info["kind"] = "taskexpert-moe"
        else:
            info["kind"] = "base-model"
            info["load"] = "the base model itself: nothing to load"
        info["verdict"] = winner_evidence(verdict)
        write_json(tmp / WINNER_FILE, info)
    return final
