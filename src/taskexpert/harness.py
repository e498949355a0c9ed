"""lm-evaluation-harness on a model already in memory: the base, base + LoRA or the mixture.

Why in-process: a mixture is not a checkpoint lm-eval can load by name, and a loaded model
need not be loaded twice. lm-eval's own `HFLM` accepts an instantiated model and tokenizer,
so its loglikelihood and generate_until are reused unchanged: the mixture's layers are
ordinary modules of the base model, and a PEFT model forwards like its base.

lm-eval is the optional extra `taskexpert[eval]`; `require_lm_eval` turns its absence into
one clear InputError.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taskexpert.errors import InputError

INSTALL_HINT = "pip install 'taskexpert[eval]'"


def require_lm_eval():
    """The lm_eval module, or an InputError saying how to install it."""
    try:
        import lm_eval
    except ImportError:
        raise InputError(
            f"--harness needs lm-evaluation-harness, which is not installed: {INSTALL_HINT}",
            field="harness",
        ) from None
    return lm_eval


def parse_tasks(tasks: str | Sequence[str]) -> list[str]:
    """A comma-separated task list (as lm_eval's --tasks) or a list, blanks dropped."""
    items = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    names = [t.strip() for t in items if t.strip()]
    if not names:
        raise InputError("no task names given", field="harness")
    return names


def harness_model(model, tokenizer, *, batch_size: int = 8, max_length: int | None = None):
    """The loaded (model, tokenizer) as an lm-eval LM (`HFLM`), evaluated where it lies."""
    require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    model.eval()
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)


def task_manager(tasks: Sequence[str], include_path: str | Path | None = None):
    """lm-eval's TaskManager with `include_path`'s tasks added (only those, when they are all
    the tasks asked for); a task name it does not know is an InputError, so a typo fails
    before any model loads."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise InputError("not a directory", include_path, field="include-path")
    manager = None
    if include_path is not None:  # indexing lm-eval's own ~15,000 tasks takes seconds
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
        if any(not manager.match_tasks([n]) for n in tasks):
            manager = None
    if manager is None:
        manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [n for n in tasks if not manager.match_tasks([n])]
    if unknown:
        where = f" (nor in {include_path})" if include_path else ""
        raise InputError(f"lm-eval knows no task {unknown[0]!r}{where}", field="harness")
    return manager


def run_harness(
    model,
    tokenizer,
    tasks: str | Sequence[str],
    *,
    include_path: str | Path | None = None,
    manager=None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    log_samples: bool = False,
) -> dict[str, Any]:
    """Run lm-eval tasks on a loaded model; lm-eval's results dict, made JSON-safe.

    `manager`: a `task_manager(...)` already built (it indexes every lm-eval task, seconds);
    else one is built from `include_path`.
    """
    require_lm_eval()
    import lm_eval

    names = parse_tasks(tasks)
    if manager is None:
        manager = task_manager(names, include_path)
    results = lm_eval.simple_evaluate(
        model=harness_model(model, tokenizer, batch_size=batch_size),
        tasks=names,
        task_manager=manager,
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=log_samples,
        bootstrap_iters=0,  # standard errors by bootstrap cost minutes and are not reported
    )
    return json_safe(results)


def json_safe(results: dict) -> dict:
    """lm-eval's results with its non-JSON values (dtypes, functions) as strings."""
    from lm_eval.utils import handle_non_serializable

    return json.loads(json.dumps(results, default=handle_non_serializable))


def task_scores(results: dict) -> dict[str, dict[str, float]]:
    """task -> {metric,filter: value}, the numbers of a results dict (stderr left out)."""
    scores = {}
    for task, metrics in results.get("results", {}).items():
        scores[task] = {
            key: value
            for key, value in metrics.items()
            if isinstance(value, int | float) and "stderr" not in key and key != "alias"
        }
    return scores
