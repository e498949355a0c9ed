"""Stage 3 as one call: read and check every input, attach the chosen experts, train the mixture.

`TrainMoeConfig` is train-moe's every setting, written once: the training's (MoeTrainConfig) and
how to load the base. The verb (`commands/train_moe.py`) only parses, calls `run_train_moe` and
prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from taskexpert.configs import build_config, own_settings
from taskexpert.errors import InputError
from taskexpert.moe.train import MoeTrainConfig
from taskexpert.recipes.common_options import LoadSettings


class TrainMoeConfig(MoeTrainConfig, LoadSettings):
    """train-moe's settings: the training's (MoeTrainConfig) and how to load the base model.

    Its data (--base, --experts, --data, --out, --kshot, --bank, --resume) are plain options.
    """

    def training(self) -> MoeTrainConfig:
        """The training's own settings: what the work directory records and --resume checks."""
        return own_settings(MoeTrainConfig, self)


def run_train_moe(
    base: str,
    experts: Path,
    data: Path,
    out: Path,
    *,
    kshot: Path | None = None,
    bank: Path | None = None,
    resume: bool = False,
    config: TrainMoeConfig | None = None,
    **settings: Any,
) -> dict:
    """Read and check every input, attach the experts, train, write the mixture directory.

    The settings are `config`, or TrainMoeConfig's fields as keywords. Returns the summary.
    """
    from taskexpert.models import load_base
    from taskexpert.moe.train import (
        build_mixture,
        check_experts_fit,
        check_output_dir,
        read_experts,
        train_mixture,
        training_records,
    )
    from taskexpert.records import load_records

    config = config or build_config(TrainMoeConfig, overrides=settings)
    train_config = config.training()
    out = Path(out)
    check_output_dir(out)
    inputs = [p for p in (experts, data, kshot) if p is not None]
    if any(out.resolve() == Path(p).resolve() for p in inputs):
        raise InputError("output would overwrite an input file", out, field="out")
    kshot_records = load_records(kshot) if kshot is not None else []
    data_records = load_records(data)
    records, duplicates = training_records(kshot_records, data_records, kshot, data)
    if train_config.router_init == "kshot" and not kshot_records:
        raise InputError("--router-init kshot needs --kshot", field="router-init")
    adapters = read_experts(experts, bank=bank, allow_pickle=config.allow_pickle)
    model, tokenizer = load_base(
        base,
        dtype=config.dtype,
        device=config.device,
        trust_remote_code=config.trust_remote_code,
        allow_pickle=config.allow_pickle,
        progress=train_config.progress,
    )
    check_experts_fit(adapters, model, config.allow_other_base)
    model, counts = build_mixture(model, tokenizer, adapters, train_config, kshot_records)
    info = {
        "inputs": {
            "base": str(base),
            "experts": str(experts),
            "bank": str(bank) if bank else None,
            "data": str(data),
            "kshot": str(kshot) if kshot else None,
        },
        "data": {
            "kshot": len(kshot_records),
            "data": len(data_records),
            "duplicates_dropped": duplicates,
            "total": len(records),
        },
        "kshot_router_examples": counts,
    }
    return train_mixture(model, tokenizer, records, out, train_config, resume=resume, info=info)
