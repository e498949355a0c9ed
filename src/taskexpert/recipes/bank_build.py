"""`taskexpert bank build`: a real LoRA bank, one adapter per named source, cached and resumable.

Why: the K-shot guided method chooses experts from a bank; on a real base model the bank has to
be built from real data first. Each adapter is a plain LoRA trained with the project's one
trainer (`lora_baselines.train_lora`, the same code as the plain-LoRA baseline), on a seeded
sample of one source (`importers.sources`), and written as an ordinary PEFT safetensors
directory plus `training.json`: what it was trained on (source, record ids and their hash),
how (steps, seed, learning rate, rank, targets), how it went (first, final and mean loss, wall
time) and on which base. The bank is then exactly what `bank.load_bank` reads.

Caching: an adapter directory whose training.json carries the same key (a hash of the
settings, the records' hash and the base model's identity) is kept as it is; any other
adapter there is rebuilt. Each adapter lands atomically (adapter files and training.json
together), so a build killed mid-bank keeps every adapter it finished and a rerun continues
with the next one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import statistics
import time
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from taskexpert.configs import Cli
from taskexpert.errors import InputError
from taskexpert.importers.sources import SOURCES, get_source, read_source
from taskexpert.io import atomic_dir, check_output
from taskexpert.recipes.common_options import LoadSettings
from taskexpert.records import Record, records_digest

log = logging.getLogger(__name__)

TRAINING_FILE = "training.json"
FORMAT = 1  # of training.json and the cache key


class BankBuildConfig(LoadSettings):
    """bank build's settings: which sources, how many records each, and the LoRA's training."""

    base: str = Field("smollm2", description="Base model directory, or 'smollm2'.")
    sources: Annotated[list[str], Cli(flag="--from")] = Field(
        list(SOURCES),
        description="Sources to build an adapter for (repeat --from); default: all of "
        + ", ".join(SOURCES),
    )
    records: int = Field(
        120, ge=1, description="Records per source: a seeded sample (all when a source has fewer)."
    )
    seed: int = Field(0, description="Seeds the record sample, the LoRA's init and the batches.")
    rank: int = Field(8, ge=1, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha.")
    targets: list[str] = Field(
        ["q_proj", "v_proj"],
        description="Module names the LoRA adapts (repeat --targets).",
    )
    max_steps: int = Field(30, ge=1, description="Optimizer steps per adapter.")
    batch_size: int = Field(4, ge=1, description="Examples per optimizer step.")
    max_length: int = Field(
        192, ge=8, description="Tokens per example (the target's tail is cut first)."
    )
    lr: float = Field(1e-3, gt=0, description="Learning rate (cosine schedule, no warmup).")
    progress: Annotated[bool, Cli(option=False, file=False)] = True

    def train_config(self):
        """The shared trainer's config for one adapter."""
        from taskexpert.train import TrainConfig

        return TrainConfig(
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            max_length=self.max_length,
            lr=self.lr,
            seed=self.seed,
            progress=self.progress,
        )

    def training_settings(self) -> dict[str, Any]:
        """What decides an adapter's weights besides its records and base (the cache key)."""
        return self.model_dump(
            mode="json",
            include={"seed", "rank", "alpha", "targets", "max_steps", "batch_size"}
            | {"max_length", "lr", "dtype"},
        )


def sample_records(name: str, data_dir: str | Path, count: int, seed: int) -> list[Record]:
    """`count` records of source `name`, drawn with `seed`, in file order (all if fewer)."""
    records = list(read_source(name, data_dir))
    if not records:
        raise InputError(f"source {name!r} has no records", data_dir, field="from")
    if len(records) <= count:
        return records
    picks = sorted(random.Random(f"{seed}:{name}").sample(range(len(records)), count))
    return [records[i] for i in picks]


def base_identity(base: str) -> dict[str, str]:
    """The base model as the cache sees it: the name given and a content fingerprint."""
    from taskexpert.recipes.run_dir import fingerprint

    return {"base": base, "fingerprint": fingerprint(base)}


def cache_key(settings: dict[str, Any], data_hash: str, base: dict[str, str]) -> str:
    text = json.dumps({"format": FORMAT, "settings": settings, "data": data_hash, "base": base},
                      sort_keys=True)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cached(adapter_dir: Path, key: str) -> dict | None:
    """The adapter's training record when it was built with `key` and is whole, else None."""
    record_path = adapter_dir / TRAINING_FILE
    if not record_path.is_file() or not (adapter_dir / "adapter_config.json").is_file():
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("key") == key else None


def _train_one(model, tokenizer, name: str, records: list[Record], out: Path,
               config: BankBuildConfig, key: str, data_hash: str, base: dict) -> dict:  # fmt: skip
    """Train one adapter and write it with its training.json, atomically."""
    from taskexpert.lora_baselines import train_lora

    began = time.perf_counter()
    with atomic_dir(out / name) as tmp:
        summary = train_lora(
            model, tokenizer, records, tmp / "adapter",
            rank=config.rank, alpha=config.alpha, targets=config.targets,
            train=config.train_config(), log=tmp / "train_log.jsonl",
        )  # fmt: skip
        for item in (tmp / "adapter").iterdir():  # the PEFT files at the adapter's top level
            shutil.move(str(item), str(tmp / item.name))
        (tmp / "adapter").rmdir()
        losses = [json.loads(line)["loss"] for line in (tmp / "train_log.jsonl").open()]
        record = {
            "format": FORMAT,
            "key": key,
            "source": name,
            "description": get_source(name).description,
            "records": len(records),
            "record_ids": [r.id for r in records],
            "records_sha256": data_hash,
            "steps": summary["steps"],
            "seed": config.seed,
            "learning_rate": config.lr,
            "batch_size": config.batch_size,
            "max_length": config.max_length,
            "rank": config.rank,
            "alpha": config.alpha,
            "targets": list(config.targets),
            "trainable_parameters": summary["trainable_parameters"],
            "first_loss": summary["first_loss"],
            "final_loss": summary["final_loss"],
            "mean_logged_loss": round(statistics.fmean(losses), 6) if losses else None,
            "train_seconds": summary["seconds"],
            "wall_seconds": round(time.perf_counter() - began, 3),
            "base_model": base,
            "base_model_name_or_path": getattr(model.config, "name_or_path", None),
        }
        (tmp / TRAINING_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def run_bank_build(
    out: str | Path, config: BankBuildConfig, data_dir: str | Path = "../shared/data"
) -> dict[str, Any]:
    """Build (or reuse) one adapter per source of `config` in `out`; returns a summary.

    Sources and data are checked before the base model loads; the bank is validated against
    the base with `bank.load_bank(strict=True)` at the end, so a bank that builds also loads.
    """
    from taskexpert.bank import load_bank
    from taskexpert.models import load_base

    out = Path(out)
    check_output(out, directory=True)
    if not config.sources:
        raise InputError("no sources to build", field="from")
    for name in config.sources:
        get_source(name)
    if len(set(config.sources)) != len(config.sources):
        raise InputError("a source is listed twice", field="from")
    began = time.perf_counter()
    base = base_identity(config.base)
    settings = config.training_settings()
    plan = []
    for name in config.sources:
        records = sample_records(name, data_dir, config.records, config.seed)
        data_hash = records_digest(records)
        key = cache_key(settings, data_hash, base)
        plan.append((name, records, data_hash, key, cached(out / name, key)))
    entries: dict[str, dict] = {}
    built, reused = [], []
    model = tokenizer = None
    for name, records, data_hash, key, record in plan:
        if record is not None:
            log.info("adapter %s: cached", name)
            reused.append(name)
        else:
            if model is None:
                model, tokenizer = load_base(
                    config.base, dtype=config.dtype, device=config.device,
                    trust_remote_code=config.trust_remote_code,
                    allow_pickle=config.allow_pickle, progress=config.progress,
                )  # fmt: skip
            log.info("adapter %s: training on %d records", name, len(records))
            record = _train_one(model, tokenizer, name, records, out, config, key, data_hash, base)
            built.append(name)
        entries[name] = record
    if model is None:
        model, _ = load_base(
            config.base, dtype=config.dtype, device=config.device,
            trust_remote_code=config.trust_remote_code, allow_pickle=config.allow_pickle,
            progress=config.progress,
        )  # fmt: skip
    load_bank(out, model, strict=True, allow_other_base=config.allow_other_base)
    return {
        "out": str(out),
        "built": built,
        "cached": reused,
        "adapters": {
            name: {k: v for k, v in record.items() if k != "record_ids"}
            for name, record in entries.items()
        },
        "seconds": round(time.perf_counter() - began, 3),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """One line per adapter: records, steps, losses, wall time, built or cached."""
    lines = [f"{'adapter':<26} {'records':>7} {'steps':>5} {'first':>7} {'final':>7} "
             f"{'seconds':>8}  status"]  # fmt: skip
    for name, rec in summary["adapters"].items():
        status = "built" if name in summary["built"] else "cached"
        lines.append(
            f"{name:<26} {rec['records']:>7} {rec['steps']:>5} {rec['first_loss']:>7.3f} "
            f"{rec['final_loss']:>7.3f} {rec['wall_seconds']:>8.1f}  {status}"
        )
    return "\n".join(lines)
