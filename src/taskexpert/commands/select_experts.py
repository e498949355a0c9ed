"""`taskexpert select-experts`: choose N LoRA experts from a bank with a K-shot set (Stage 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from taskexpert.commands import options
from taskexpert.errors import InputError
from taskexpert.io import check_output, remove_tree, write_json


def run_select_experts(
    base: str,
    bank_source: Path,
    kshot_path: Path,
    out: Path,
    *,
    strict: bool = False,
    allow_pickle: bool = False,
    allow_other_base: bool = False,
    trust_remote_code: bool = False,
    device: str = "auto",
    dtype: str = "float32",
    workers: int = 0,
    gpus_per_worker: float = 0,
    **config: Any,
):
    """Load everything (failing early on bad input), select, then write experts.json atomically.

    `workers` > 0 scores the bank on that many Ray actors, each loading the base itself.
    Scores are kept in `score_dir(out)` while the bank is scored, so a killed run resumes
    where it stopped when rerun; the directory goes once experts.json is written.
    """
    from pydantic import ValidationError

    from taskexpert.bank import bank_entries, load_bank
    from taskexpert.experts.distributed import base_loader
    from taskexpert.experts.scoring import check_kshot
    from taskexpert.experts.select import ExpertSelectionConfig, select_experts
    from taskexpert.records import load_records

    out = Path(out)
    check_output(out)
    if out.resolve() == Path(kshot_path).resolve():
        raise InputError("output would overwrite the K-shot file", out, field="out")
    try:
        selection_config = ExpertSelectionConfig(**config)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]).replace("_", "-")
        raise InputError(err["msg"], field=field) from None
    # one loader for the driver and, with --workers, for every Ray actor
    load = base_loader(
        base,
        dtype=dtype,
        device=device,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        progress=selection_config.progress,
    )
    scorer = None
    if workers < 0:
        raise InputError(f"must be 0 (in-process) or more, got {workers}", field="workers")
    if workers:
        from taskexpert.experts.distributed import RayBankScorer, import_ray

        import_ray()  # a missing optional dependency fails before any model loads
        scorer = RayBankScorer(load, workers=workers, num_gpus_per_worker=gpus_per_worker)
    kshot = load_records(kshot_path)
    check_kshot(kshot, kshot_path, contrast=selection_config.needs_contrast)
    bank_entries(bank_source)  # a missing bank or a bad list file fails before the base loads
    model, tokenizer = load()
    bank = load_bank(bank_source, model, strict, allow_pickle, allow_other_base)
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


def main(
    base: str = typer.Option(..., "--base", help="Base model directory, or 'smollm2'."),
    bank: Path = typer.Option(
        ..., "--bank", help="Directory of PEFT LoRA adapter dirs, or a list file (one per line)."
    ),
    kshot: Path = typer.Option(
        ..., "--kshot", help="K-shot records (JSONL with answer/rationale)."
    ),
    out: Path = typer.Option(..., "--out", help="Where to write experts.json."),
    n: int = typer.Option(4, "--n", help="Experts in the group (paper: 4)."),
    m: int | None = typer.Option(None, "--m", help="Candidates kept by quality (default: 2N)."),
    tolerance: float = typer.Option(
        0.1, "--tolerance", help="Quality slack (0..1) within which the most diverse group wins."
    ),
    em_weight: float = typer.Option(1.0, "--em-weight", help="Weight of the EM rank."),
    perplexity_weight: float = typer.Option(
        1.0, "--perplexity-weight", help="Weight of the perplexity rank (0: EM only)."
    ),
    perplexity: str = typer.Option(
        "rppl", "--perplexity", help="rppl (reasoning, paper) or ppl (bare answer)."
    ),
    rppl_variant: str = typer.Option(
        "paper",
        "--rppl-variant",
        help="paper, relative (vs base), contrast (vs another item's rationale), content.",
    ),
    report_variants: bool = typer.Option(
        False, "--report-variants", help="Also compute and record every RPPL variant."
    ),
    similarity: str = typer.Option(
        "delta", "--similarity", help="delta (exact cos of B·A) or factors (paper's A/B cosines)."
    ),
    no_diversity: bool = typer.Option(False, "--no-diversity", help="Plain top-N by quality."),
    group_objective: str = typer.Option(
        "diversity",
        "--group-objective",
        help="diversity (paper: most diverse near-best group) or coverage (lowest reasoning "
        "perplexity when each token goes to the member that predicts it best).",
    ),
    coverage_tolerance: float = typer.Option(
        0.02,
        "--coverage-tolerance",
        help="With coverage: groups within this relative slack of the lowest routed "
        "perplexity qualify, and the least similar wins.",
    ),
    shrink: bool = typer.Option(
        False,
        "--shrink",
        help="With coverage: the smallest group within the slack of the best N-group, so a "
        "member the router would hardly use is left out (N becomes a ceiling).",
    ),
    keep_below_base: bool = typer.Option(
        False, "--keep-below-base", help="Keep adapters whose EM is below the base model's."
    ),
    drop_above_base_perplexity: bool = typer.Option(
        False,
        "--drop-above-base-perplexity",
        help="Drop adapters whose (reasoning) perplexity is above the base model's.",
    ),
    drop_ungrounded: bool = typer.Option(
        False,
        "--drop-ungrounded",
        help="Drop adapters whose rationales depend on the question less than the base "
        "model's (contrast score above the base's by more than --grounding-tolerance): the "
        "format-mimic, which plain reasoning perplexity misses.",
    ),
    grounding_tolerance: float = typer.Option(
        0.05, "--grounding-tolerance", min=0.0, help="Relative slack of --drop-ungrounded."
    ),
    max_pair_similarity: float = typer.Option(
        0.9, "--max-pair-similarity", help="Near-duplicate threshold (1 turns the rule off)."
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Examples per forward pass."),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", help="Generation length (default: from the K-shot targets)."
    ),
    strict: bool = typer.Option(False, "--strict", help="Stop on the first unusable adapter."),
    allow_pickle: bool = options.ALLOW_PICKLE,
    allow_other_base: bool = options.ALLOW_OTHER_BASE,
    trust_remote_code: bool = options.TRUST_REMOTE_CODE,
    device: str = options.DEVICE,
    dtype: str = options.DTYPE,
    workers: int = typer.Option(
        0, "--workers", help="Ray actors scoring the bank (0: in-process; needs the 'ray' extra)."
    ),
    gpus_per_worker: float = typer.Option(
        0, "--gpus-per-worker", help="GPUs each Ray actor requests (with --workers)."
    ),
) -> None:
    """Score a LoRA bank on a K-shot set and choose N diverse, competent experts (Stage 1)."""
    selection = run_select_experts(
        base,
        bank,
        kshot,
        out,
        strict=strict,
        allow_pickle=allow_pickle,
        allow_other_base=allow_other_base,
        trust_remote_code=trust_remote_code,
        device=device,
        dtype=dtype,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        n=n,
        m=m,
        tolerance=tolerance,
        em_weight=em_weight,
        perplexity_weight=perplexity_weight,
        perplexity=perplexity,
        rppl_variant=rppl_variant,
        report_variants=report_variants,
        similarity=similarity,
        diversity=not no_diversity,
        group_objective=group_objective,
        coverage_tolerance=coverage_tolerance,
        shrink=shrink,
        drop_below_base=not keep_below_base,
        drop_above_base_perplexity=drop_above_base_perplexity,
        drop_ungrounded=drop_ungrounded,
        grounding_tolerance=grounding_tolerance,
        max_pair_similarity=None if max_pair_similarity >= 1 else max_pair_similarity,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
    )
    typer.echo(selection.table())
    for warning in selection.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"\n{selection.reason}\nwrote {out}")
