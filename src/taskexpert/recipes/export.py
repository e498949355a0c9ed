"""`taskexpert export RUN_DIR`: hand a finished run's model to the user, or fold its mixture.

Without --merge the run's winner (final/, written by `taskexpert run`) is copied out. With
--merge the run's mixture becomes one plain PEFT LoRA (moe/fold.py): only when its routing
collapsed (moe/routing.py), because folding a mixture that really routes changes its outputs;
--force folds anyway. Either way the max and mean |logit difference| between the mixture and
the fold on the first evaluation items are measured and written to export.json, so the user
sees what the fold cost.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from taskexpert.errors import InputError

log = logging.getLogger(__name__)

EXPORT_FILE = "export.json"  # what was exported and how to load it; marks an export folder


class ExportConfig(BaseModel):
    """export's settings; its data (RUN_DIR, --out) are plain options."""

    model_config = ConfigDict(extra="forbid")

    merge: bool = Field(
        False,
        description="Fold the run's mixture into one PEFT LoRA (when its routing collapsed).",
    )
    force: bool = Field(
        False,
        description="Fold even when routing did not collapse: the outputs change (the measured "
        "difference is reported).",
    )
    min_share: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="Experts under this share of a layer's routing are left out of the fold.",
    )
    check_items: int = Field(
        8, ge=1, description="Evaluation items on which mixture and fold logits are compared."
    )
    seed: int | None = Field(
        None,
        description="The mixture seed to fold [default: the winner's if the mixture won, else "
        "the seed with the median score].",
    )


def _manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "manifest.json"
    if not path.is_file():
        raise InputError("not a taskexpert run directory (no manifest.json)", run_dir)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"cannot read the run manifest: {exc}", path) from None


def _check_out(out: Path, run_dir: Path) -> None:
    """Never replace something that is not an earlier export, nor a part of the run."""
    resolved = out.resolve()
    inside = [(run_dir / "final").resolve(), (run_dir / "stages").resolve()]
    if resolved == run_dir.resolve() or any(p == resolved or p in resolved.parents for p in inside):
        raise InputError("the export would overwrite part of the run", out, field="out")
    earlier = (out / EXPORT_FILE).exists()
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not earlier):
        raise InputError(f"not an earlier export (no {EXPORT_FILE})", out, field="out")


def export_winner(run_dir: Path, out: Path) -> dict[str, Any]:
    """Copy final/ (the verdict's winner and winner.json) to `out`."""
    from taskexpert.io import atomic_dir, write_json
    from taskexpert.recipes.run import FINAL_DIR
    from taskexpert.recipes.run_outcome import WINNER_FILE

    final = run_dir / FINAL_DIR
    if not (final / WINNER_FILE).is_file():
        raise InputError(
            f"the run has no {FINAL_DIR}/{WINNER_FILE} yet: finish it with "
            "`taskexpert run CONFIG --out RUN_DIR --resume`",
            run_dir,
        )
    winner = json.loads((final / WINNER_FILE).read_text(encoding="utf-8"))
    with atomic_dir(out) as tmp:
        shutil.copytree(final, tmp, dirs_exist_ok=True)
        summary = {"mode": "winner", **winner, "run": str(run_dir)}
        write_json(tmp / EXPORT_FILE, summary)
    return summary


def _mixture_seed(run_dir: Path, config, seed: int | None) -> int:
    """The seed to fold: asked for, the winner's, or the median-scoring one."""
    from taskexpert.recipes.run import FINAL_DIR
    from taskexpert.recipes.run_outcome import WINNER_FILE, item_scores, representative_seed

    if "moe" not in config.methods:
        raise InputError("the run trained no mixture ('moe' is not in its methods)", run_dir)
    if seed is not None:
        if seed not in config.seeds:
            raise InputError(f"the run has no seed {seed} (seeds: {config.seeds})", field="seed")
        return seed
    winner_file = run_dir / FINAL_DIR / WINNER_FILE
    if winner_file.is_file():
        winner = json.loads(winner_file.read_text(encoding="utf-8"))
        if winner.get("method") == "moe" and winner.get("seed") is not None:
            return int(winner["seed"])
    scores = {}
    for s in config.seeds:
        path = run_dir / "stages" / "eval" / f"moe-seed{s}" / "eval.json"
        if path.is_file():
            values = item_scores(json.loads(path.read_text()), config.evaluate.metric)
            scores[s] = sum(values) / len(values)
    return representative_seed(scores) if scores else config.seeds[0]


def _comparison_batches(tokenizer, records, batch_size: int) -> list[dict]:
    """Prompt + reference output of the items, as the routing was measured on."""
    from taskexpert.lm import collate, encode_pair, ensure_pad_token
    from taskexpert.prompts import format_prompt

    pad_id = ensure_pad_token(tokenizer)
    pairs = [encode_pair(tokenizer, format_prompt(r, tokenizer), r.output, 512) for r in records]
    return [collate(pairs[i : i + batch_size], pad_id) for i in range(0, len(pairs), batch_size)]


def export_merged(run_dir: Path, out: Path, manifest: dict, settings: ExportConfig) -> dict:
    """Fold the run's mixture into one PEFT LoRA in `out`/adapter; refuses a mixture whose
    routing did not collapse unless `settings.force`."""
    from taskexpert.io import atomic_dir, write_json
    from taskexpert.models import load_base
    from taskexpert.moe import load_mixture
    from taskexpert.moe.fold import gates_from_routing, logit_difference, write_stacked_lora
    from taskexpert.moe.routing import RoutingReport
    from taskexpert.peft_glue import attach_checked
    from taskexpert.recipes.routing import ROUTING_FILE, measure_split_routing
    from taskexpert.recipes.run_config import RunConfig
    from taskexpert.records import load_records

    config = RunConfig.model_validate(manifest["config"])
    seed = _mixture_seed(run_dir, config, settings.seed)
    mixture_dir = run_dir / "stages" / "train" / f"moe-seed{seed}" / "model"
    test = run_dir / "stages" / "split" / "test.jsonl"
    for path in (mixture_dir, test):
        if not path.exists():
            raise InputError("missing: finish the run with --resume first", path)
    routing_file = run_dir / "stages" / "eval" / f"moe-seed{seed}" / ROUTING_FILE
    report = None
    if routing_file.is_file():
        report = RoutingReport.from_json(json.loads(routing_file.read_text()), routing_file)
        _refuse_unless_collapsed(report, settings.force, routing_file)
    runtime = config.runtime
    base, tokenizer = load_base(
        config.base,
        dtype=runtime.dtype,
        device=runtime.device,
        trust_remote_code=runtime.trust_remote_code,
        allow_pickle=runtime.allow_pickle,
        progress=False,
    )
    clean = copy.deepcopy(base)  # load_mixture attaches in place; the fold needs a bare base
    mixture = load_mixture(base, mixture_dir).eval()
    if report is None:  # a run from before routing.json: measure it now
        log.info("no %s for seed %d: measuring routing on %s", ROUTING_FILE, seed, test)
        batch = config.evaluate.batch_size
        report = measure_split_routing(mixture, tokenizer, load_records(test), test, batch)
        _refuse_unless_collapsed(report, settings.force, test)
    gates = gates_from_routing(report, mixture, settings.min_share)
    records = load_records(test)[: settings.check_items]
    with atomic_dir(out) as tmp:
        (tmp / "adapter").mkdir()
        ranks = write_stacked_lora(mixture, gates, tmp / "adapter")
        folded = attach_checked(
            clean, tmp / "adapter", allow_other_base=runtime.allow_other_base
        ).eval()
        batches = _comparison_batches(tokenizer, records, config.evaluate.batch_size)
        difference = {**logit_difference(mixture, folded, batches), "items": len(records)}
        write_json(tmp / ROUTING_FILE, report.to_json())
        summary = {
            "mode": "merge",
            "method": "moe",
            "seed": seed,
            "base": config.base,
            "mixture": str(mixture_dir),
            "run": str(run_dir),
            "kind": "peft-lora",
            "load": "PeftModel.from_pretrained(base_model, 'adapter')",
            "collapsed": report.collapsed,
            "forced": settings.force and not report.collapsed,
            "min_share": settings.min_share,
            "gates": gates,
            "ranks": ranks,
            "logit_difference": difference,
        }
        write_json(tmp / EXPORT_FILE, summary)
    log.info(
        "folded mixture seed %d: logit difference max %.3g, mean %.3g over %d tokens",
        seed, difference["max_abs"], difference["mean_abs"], difference["tokens"],
    )  # fmt: skip
    return summary


def _refuse_unless_collapsed(report, force: bool, where: Path) -> None:
    if report.collapsed:
        return
    shares = ", ".join(f"{s:.2f}" for s in report.dominant_share)
    if not force:
        raise InputError(
            f"routing did not collapse (largest expert share per layer: {shares}); folding "
            "would replace real routing by constant gates and change the outputs. Keep the "
            "mixture, or pass --force to fold anyway (the logit difference is reported)",
            where,
            field="merge",
        )
    log.warning("routing did not collapse; folding anyway (--force)")


def run_export(run_dir: Path, out: Path | None, settings: ExportConfig) -> dict[str, Any]:
    """Export the winner, or with `merge` the folded mixture; returns export.json's content."""
    run_dir = Path(run_dir)
    manifest = _manifest(run_dir)
    if settings.force and not settings.merge:
        raise InputError("--force only applies to --merge", field="force")
    default = "export-merged" if settings.merge else "export"
    out = Path(out) if out is not None else run_dir / default
    _check_out(out, run_dir)
    if settings.merge:
        return {**export_merged(run_dir, out, manifest, settings), "out": str(out)}
    return {**export_winner(run_dir, out), "out": str(out)}
