"""`taskexpert evaluate --harness`: lm-evaluation-harness tasks on the base, a LoRA or the
mixture, loaded the way `evaluate` loads them, results written as one JSON file.

Why a recipe of its own: the scoring is lm-eval's (`taskexpert.harness`), so none of
taskexpert's test-set checks apply; what is shared with `evaluate` is how the model loads
(`recipes.evaluate.load_for_eval`) and the output conventions (atomic, checked path).
"""

from __future__ import annotations

from pathlib import Path

from taskexpert.errors import InputError


def run_harness_evaluate(
    base: str,
    tasks: str,
    out: Path,
    *,
    adapter: Path | None = None,
    moe: Path | None = None,
    include_path: Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
    **load,
) -> dict:
    """Load, run the tasks, write {scores, harness, model, tasks, settings}; return it.

    `load`: `load_for_eval`'s settings (allow_pickle, device, dtype, ...)."""
    from taskexpert.harness import (
        parse_tasks,
        require_lm_eval,
        run_harness,
        task_manager,
        task_scores,
    )
    from taskexpert.io import check_output, write_json
    from taskexpert.recipes.evaluate import load_for_eval

    require_lm_eval()  # before any model loads
    out = Path(out)
    check_output(out)
    names = parse_tasks(tasks)
    if limit is not None and limit < 1:
        raise InputError("must be at least 1", field="limit")
    if batch_size < 1:
        raise InputError("must be at least 1", field="batch-size")
    manager = task_manager(names, include_path)
    model, tokenizer = load_for_eval(base, adapter, moe, progress=progress, **load)
    results = run_harness(
        model,
        tokenizer,
        names,
        manager=manager,
        limit=limit,
        batch_size=batch_size,
    )
    report = {
        "scores": task_scores(results),
        "harness": {
            k: results[k] for k in ("results", "n-samples", "configs", "versions") if k in results
        },
        "model": {
            "base": str(base),
            "adapter": str(adapter) if adapter else None,
            "moe": str(moe) if moe else None,
        },
        "tasks": names,
        "settings": {
            "include_path": str(include_path) if include_path else None,
            "limit": limit,
            "batch_size": batch_size,
        },
    }
    write_json(out, report)
    return report
