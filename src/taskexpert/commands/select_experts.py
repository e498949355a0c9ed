"""`taskexpert select-experts`: choose N LoRA experts from a bank with a K-shot set (Stage 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from pydantic import Field

from taskexpert.commands import options
from taskexpert.configs import build_config, shared_field, verb_command
from taskexpert.errors import InputError
from taskexpert.experts.config import ExpertSelectionConfig
from taskexpert.io import check_output, remove_tree, write_json


class SelectExpertsConfig(ExpertSelectionConfig):
    """select-experts' settings: the selection's (ExpertSelectionConfig) and how to run it.

    Its data (--base, --bank, --kshot, --out) are plain options.
    """

    strict: bool = Field(False, description="Stop on the first unusable adapter.")
    allow_pickle: bool = shared_field(options.ALLOW_PICKLE)
    allow_other_base: bool = shared_field(options.ALLOW_OTHER_BASE)
    trust_remote_code: bool = shared_field(options.TRUST_REMOTE_CODE)
    device: str = shared_field(options.DEVICE)
    dtype: str = shared_field(options.DTYPE)
    workers: int = Field(
        0, description="Ray actors scoring the bank (0: in-process; needs the 'ray' extra)."
    )
    gpus_per_worker: float = Field(0, description="GPUs each Ray actor requests (with --workers).")

    def selection(self) -> ExpertSelectionConfig:
        """The selection's own settings (what experts.json records)."""
        own = set(ExpertSelectionConfig.model_fields)
        return ExpertSelectionConfig.model_validate(self.model_dump(include=own))


def run_select_experts(
    base: str,
    bank_source: Path,
    kshot_path: Path,
    out: Path,
    config: SelectExpertsConfig | None = None,
    **settings: Any,
):
    """Load everything (failing early on bad input), select, then write experts.json atomically.

    The settings are `config`, or SelectExpertsConfig's fields as keywords.
    `workers` > 0 scores the bank on that many Ray actors, each loading the base itself.
    Scores are kept in `score_dir(out)` while the bank is scored, so a killed run resumes
    where it stopped when rerun; the directory goes once experts.json is written.
    """
    from taskexpert.bank import bank_entries, load_bank
    from taskexpert.experts.distributed import base_loader
    from taskexpert.experts.scoring import check_kshot
    from taskexpert.experts.select import select_experts
    from taskexpert.records import load_records

    out = Path(out)
    check_output(out)
    if out.resolve() == Path(kshot_path).resolve():
        raise InputError("output would overwrite the K-shot file", out, field="out")
    config = config or build_config(SelectExpertsConfig, overrides=settings)
    selection_config = config.selection()
    # one loader for the driver and, with --workers, for every Ray actor
    load = base_loader(
        base,
        dtype=config.dtype,
        device=config.device,
        trust_remote_code=config.trust_remote_code,
        allow_pickle=config.allow_pickle,
        progress=selection_config.progress,
    )
    scorer = None
    workers = config.workers
    if workers < 0:
        raise InputError(f"must be 0 (in-process) or more, got {workers}", field="workers")
    if workers:
        from taskexpert.experts.distributed import RayBankScorer, import_ray

        import_ray()  # a missing optional dependency fails before any model loads
        scorer = RayBankScorer(load, workers=workers, num_gpus_per_worker=config.gpus_per_worker)
    kshot = load_records(kshot_path)
    check_kshot(kshot, kshot_path, contrast=selection_config.needs_contrast)
    bank_entries(bank_source)  # a missing bank or a bad list file fails before the base loads
    model, tokenizer = load()
    bank = load_bank(
        bank_source, model, config.strict, config.allow_pickle, config.allow_other_base
    )
    work = score_dir(out)
    selection = select_experts(
        model, tokenizer, bank, kshot, selection_config, kshot_path, scorer=scorer, score_dir=work
    )
    result = selection.to_json(
        inputs={"base": str(base), "bank": str(bank_source), "kshot": str(kshot_path)}
    )
    write_json(out, result)
    remove_tree(work)
    return selection


def score_dir(out: Path) -> Path:
    """Where an unfinished run keeps its scores: `.<out name>.partial` beside experts.json."""
    return out.parent / f".{out.name}.partial"


@verb_command(SelectExpertsConfig)
def main(
    base: str = typer.Option(..., "--base", help="Base model directory, or 'smollm2'."),
    bank: Path = typer.Option(
        ..., "--bank", help="Directory of PEFT LoRA adapter dirs, or a list file (one per line)."
    ),
    kshot: Path = typer.Option(
        ..., "--kshot", help="K-shot records (JSONL with answer/rationale)."
    ),
    out: Path = typer.Option(..., "--out", help="Where to write experts.json."),
    *,
    config: SelectExpertsConfig,
) -> None:
    """Score a LoRA bank on a K-shot set and choose N diverse, competent experts (Stage 1)."""
    selection = run_select_experts(base, bank, kshot, out, config)
    typer.echo(selection.table())
    for warning in selection.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"\n{selection.reason}\nwrote {out}")
