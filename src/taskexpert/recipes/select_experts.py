"""Stage 1 as a run: load a LoRA bank and a K-shot set, choose N experts, write experts.json.

Kept apart from the CLI (`commands/select_experts.py` only parses and prints) so Python callers
and other recipes run the same thing; the selection itself is `taskexpert.experts`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from taskexpert.configs import build_config, own_settings
from taskexpert.errors import InputError
from taskexpert.experts.config import ExpertSelectionConfig
from taskexpert.io import check_output, remove_tree, write_json
from taskexpert.recipes.common_options import LoadSettings, RaySettings

if TYPE_CHECKING:
    from taskexpert.experts.select import ExpertSelection


class SelectExpertsConfig(ExpertSelectionConfig, LoadSettings, RaySettings):
    """select-experts' settings: the selection's (ExpertSelectionConfig) and how to run it.

    Its data (--base, --bank, --kshot, --out) are plain options.
    """

    strict: bool = Field(False, description="Stop on the first unusable adapter.")

    def selection(self) -> ExpertSelectionConfig:
        """The selection's own settings (what experts.json records)."""
        return own_settings(ExpertSelectionConfig, self)


def run_select_experts(
    base: str,
    bank_source: Path,
    kshot_path: Path,
    out: Path,
    config: SelectExpertsConfig | None = None,
    scores: Path | None = None,
    **settings: Any,
) -> ExpertSelection:
    """Load everything (failing early on bad input), select, then write experts.json atomically.

    The settings are `config`, or SelectExpertsConfig's fields as keywords.
    With `ray`, the bank is scored on `ray_actors` Ray actors, each loading the base itself.
    Scores are kept in `scores` (default `score_dir(out)`) while the bank is scored, so a
    killed run resumes where it stopped when rerun; the directory goes once experts.json is
    written. Pass `scores` when `out` lies in a fresh temp directory per attempt.
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
    # one loader for the driver and, with --ray, for every Ray actor
    load = base_loader(
        base,
        dtype=config.dtype,
        device=config.device,
        trust_remote_code=config.trust_remote_code,
        allow_pickle=config.allow_pickle,
        progress=selection_config.progress,
    )
    scorer = None
    if config.ray:
        from taskexpert.experts.distributed import RayBankScorer, import_ray

        import_ray()  # a missing optional dependency fails before any model loads
        scorer = RayBankScorer(
            load,
            workers=config.ray_actors,
            num_gpus_per_worker=config.ray_gpus_per_actor,
            address=config.ray,
        )
    kshot = load_records(kshot_path)
    check_kshot(kshot, kshot_path, contrast=selection_config.needs_contrast)
    bank_entries(bank_source)  # a missing bank or a bad list file fails before the base loads
    model, tokenizer = load()
    bank = load_bank(
        bank_source, model, config.strict, config.allow_pickle, config.allow_other_base
    )
    work = Path(scores) if scores is not None else score_dir(out)
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
