"""Stage 3's training run: the chosen experts become a mixture, trained on K-shot + selected data.

experts.json (Stage 1) names the adapters and the bank they came from; they are loaded, checked
against the base, attached as a mixture (base frozen) and trained, experts and routers together,
by the shared trainer: response-only loss, the optional load-balancing loss as its `aux_loss`,
router entropy and per-expert load over the real (unpadded) tokens logged through `on_log`
into `train_log.jsonl`. The routers may have their own learning rate (`router_lr`).

Nothing is written until every input has been read and checked. Checkpoints and the running log
live in a hidden work directory beside the output (`.<out>.partial/`, a `rundir.RunDir`: locked
while a run uses it, its run.json the settings, data digest and format version), so an
interrupted run resumes with --resume; the mixture directory appears whole at the end (atomic
rename) and the work directory is removed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from taskexpert.artifacts import read_experts_document
from taskexpert.bank import LoraAdapter, bank_entries, load_adapter, require_fit
from taskexpert.configs import Cli
from taskexpert.errors import InputError
from taskexpert.io import atomic_dir, atomic_open, check_output, remove_tree, write_json
from taskexpert.moe.config import CONFIG_FILE, MoeConfig
from taskexpert.records import Record, records_digest
from taskexpert.rundir import IDENTITY_FILE, Change, RunDir, value_before
from taskexpert.runtime import is_main_process

TRAIN_LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "train_summary.json"
RUN_FILE = IDENTITY_FILE  # in the work directory


class MoeTrainConfig(BaseModel):
    """Every knob of `train-moe`; defaults are the paper's (5 epochs, lr 5e-5, batch 64, top-2).

    The descriptions are the verb's option help (`configs.verb_command`).
    """

    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(2, ge=1, description="Experts per token (paper: 2).")
    router_init: Literal["fresh", "kshot"] = Field(
        "fresh", description="fresh (small random) or kshot (K-shot hidden states)."
    )
    kshot_temperature: float | None = Field(
        None,
        gt=0,
        description="Logit scale of K-shot routers (--router-init kshot) [default: the mixture's].",
    )
    load_balancing_coef: Annotated[float, Cli(flag="--lb-coef")] = Field(
        0.0, ge=0, description="Load-balancing loss coefficient (0: off, as in the paper)."
    )
    shared_rank: int = Field(
        8,
        ge=0,
        description="Rank of an always-on shared LoRA beside the routed experts, trained with "
        "them (MixLoRA, DeepSeekMoE): the measured best on the testbed's two-skill targets; "
        "0: none, as in the paper.",
    )
    shared_alpha: float | None = Field(
        None, gt=0, description="LoRA alpha of the shared LoRA [default: twice its rank]."
    )
    epochs: float = Field(5.0, gt=0, description="Passes over the data (paper: 5).")
    max_steps: int | None = Field(None, gt=0, description="Optimizer steps; overrides --epochs.")
    lr: float = Field(5e-5, gt=0, description="Learning rate of the experts (and routers).")
    router_lr: float | None = Field(
        None, ge=0, description="Learning rate of the routers [default: --lr]."
    )
    batch_size: int = Field(
        64, gt=0, description="Examples per optimizer step, by gradient accumulation."
    )
    micro_batch_size: int = Field(8, gt=0, description="Examples per forward pass (memory).")
    max_length: int = Field(512, gt=1, description="Tokens per example.")
    warmup_ratio: float = Field(0.03, ge=0, le=1, description="Share of the steps warming up.")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate schedule after the warmup."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    seed: int = Field(0, description="Seed of the routers and of the data order.")
    log_every: int = Field(5, gt=0, description="Optimizer steps between log lines.")
    checkpoint_every: int = Field(
        50, ge=0, description="Optimizer steps between checkpoints (0: none)."
    )
    progress: Annotated[bool, Cli(option=False, file=False)] = True

    def moe_config(self) -> MoeConfig:
        extra = (
            {} if self.kshot_temperature is None else {"kshot_temperature": self.kshot_temperature}
        )
        return MoeConfig(
            top_k=self.top_k,
            load_balancing_coef=self.load_balancing_coef,
            router_seed=self.seed,
            shared_rank=self.shared_rank,
            shared_alpha=self.shared_alpha,
            **extra,
        )

    def train_config(self, checkpoint_dir: Path | None = None, resume: bool = False):
        """The shared trainer's config: micro-batches accumulated up to `batch_size`.

        `batch_size` is the global batch: with N processes (`accelerate launch`) each
        accumulates batch_size / (micro_batch_size * N) micro-batches, so a run started on
        more processes takes the same optimizer steps on the same batches."""
        from taskexpert.moe.layer import ROUTER_PARAMETER_PATTERN
        from taskexpert.runtime import world_size
        from taskexpert.train import TrainConfig, accumulation

        routers = {} if self.router_lr is None else {ROUTER_PARAMETER_PATTERN: self.router_lr}
        micro, grad_accum = accumulation(self.batch_size, self.micro_batch_size, world_size())
        return TrainConfig(
            epochs=self.epochs,
            max_steps=self.max_steps,
            lr=self.lr,
            lr_overrides=routers,
            batch_size=micro,
            grad_accum=grad_accum,
            warmup_ratio=self.warmup_ratio,
            schedule=self.schedule,
            weight_decay=self.weight_decay,
            max_length=self.max_length,
            seed=self.seed,
            log_every=self.log_every,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=self.checkpoint_every if checkpoint_dir else 0,
            resume=resume,
            progress=self.progress,
        )


# --- experts.json -> adapters ------------------------------------------------------------------


@dataclass(frozen=True)
class ExpertsFile:
    """What train-moe needs from experts.json: the chosen names and where the bank is."""

    path: Path
    chosen: list[str]
    bank: Path | None


def read_experts_file(path: str | Path) -> ExpertsFile:
    """Parse experts.json (select-experts' output, or a hand-written {"chosen", "bank"});
    validated once here by artifacts.ExpertsDocument, errors name the file and key path."""
    document = read_experts_document(path)
    return ExpertsFile(Path(path), list(document.chosen), document.bank_path())


def _resolve_bank(experts: ExpertsFile, bank: str | Path | None) -> Path:
    """--bank wins; else the bank recorded in experts.json (as given, or beside the file)."""
    if bank is not None:
        bank = Path(bank)
        if not bank.exists():
            raise InputError("bank not found", bank, field="bank")
        return bank
    if experts.bank is None:
        raise InputError(
            "experts.json does not say where the bank is (no inputs.bank); pass --bank",
            experts.path,
            field="inputs.bank",
        )
    for candidate in (experts.bank, experts.path.parent / experts.bank):
        if candidate.exists():
            return candidate
    raise InputError(
        f"the bank it names ({experts.bank}) does not exist here; pass --bank",
        experts.path,
        field="inputs.bank",
    )


def expert_paths(experts: ExpertsFile, bank: str | Path | None = None) -> list[tuple[str, Path]]:
    """(name, adapter directory) of every chosen expert; a name not in the bank is an error."""
    source = _resolve_bank(experts, bank)
    entries = {name: path for name, path, _ in bank_entries(source)}
    found = []
    for name in experts.chosen:
        if name not in entries or not entries[name].exists():
            known = ", ".join(sorted(entries)[:8]) + (" ..." if len(entries) > 8 else "")
            raise InputError(
                f"chosen adapter {name!r} is not in the bank {source} (it holds: {known})",
                experts.path,
                field="chosen",
            )
        found.append((name, entries[name]))
    return found


def read_experts(
    experts_path: str | Path, bank: str | Path | None = None, allow_pickle: bool = False
) -> list[LoraAdapter]:
    """Read the chosen adapters once (no base model needed: bad files fail before it loads)."""
    experts = read_experts_file(experts_path)
    return [
        load_adapter(path, name=name, allow_pickle=allow_pickle)
        for name, path in expert_paths(experts, bank)
    ]


def check_experts_fit(
    adapters: Sequence[LoraAdapter], base_model, allow_other_base: bool = False
) -> None:
    """Every expert fits the base model; the error names the adapter and what does not fit."""
    for adapter in adapters:
        label = f"expert {adapter.name!r}"
        require_fit(adapter, base_model, label, adapter.path, allow_other_base)


def load_experts(
    experts_path: str | Path,
    base_model,
    bank: str | Path | None = None,
    allow_pickle: bool = False,
    allow_other_base: bool = False,
) -> list[LoraAdapter]:
    """Read the chosen adapters once and check each fits the base; errors name the adapter."""
    adapters = read_experts(experts_path, bank, allow_pickle)
    check_experts_fit(adapters, base_model, allow_other_base)
    return adapters


# --- training data --------------------------------------------------------------------------


def training_records(
    kshot: Sequence[Record],
    data: Sequence[Record],
    kshot_path: str | Path | None = None,
    data_path: str | Path | None = None,
) -> tuple[list[Record], int]:
    """K-shot + selected data; a record present in both (same id, same content) counts once.

    Returns the records and how many duplicates were dropped; the same id with different
    content, or a record with nothing to train on, is an error naming file and record.
    """
    merged: dict[str, Record] = {}
    dropped = 0
    for records, path in ((kshot, kshot_path), (data, data_path)):
        for record in records:
            if not record.output.strip():
                raise InputError(
                    f"record {record.id!r}: empty output, nothing to train on", path, field="output"
                )
            previous = merged.get(record.id)
            if previous is None:
                merged[record.id] = record
            elif previous.to_dict() == record.to_dict():
                dropped += 1
            else:
                first = kshot_path if previous in kshot else "this file"
                raise InputError(
                    f"record id {record.id!r} appears twice with different content "
                    f"(first in {first})",
                    path,
                    field="id",
                )
    if not merged:
        raise InputError("no training records", data_path)
    return list(merged.values()), dropped


# --- the run --------------------------------------------------------------------------------


def build_mixture(
    base_model,
    tokenizer,
    adapters: Sequence[LoraAdapter],
    config: MoeTrainConfig,
    kshot: Sequence[Record] | None = None,
) -> tuple[object, dict[str, int]]:
    """Attach the experts (base frozen) and set the routers; returns the model and, for K-shot
    routers, how many K-shot examples went to each expert."""
    from taskexpert.moe.model import attach_mixture
    from taskexpert.moe.router_init import init_routers_from_kshot

    model = attach_mixture(base_model, adapters, config.moe_config())
    counts: dict[str, int] = {}
    if config.router_init == "kshot":
        if not kshot:
            raise InputError("router init 'kshot' needs K-shot records (--kshot)", field="kshot")
        counts = init_routers_from_kshot(
            model,
            tokenizer,
            list(kshot),
            batch_size=config.micro_batch_size,
            max_length=config.max_length,
        )
    return model, counts


def work_dir(out: str | Path) -> Path:
    """Where an unfinished run keeps its checkpoints and log: `.<out name>.partial` beside it."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def check_output_dir(out: str | Path) -> None:
    """The output is replaced whole at the end: never let that erase an unrelated directory
    (and never train for an output that cannot be written)."""
    out = Path(out)
    if out.is_file():
        raise InputError("output exists and is a file", out, field="out")
    if out.is_dir() and any(out.iterdir()) and not (out / CONFIG_FILE).is_file():
        raise InputError("output exists and is not a mixture directory", out, field="out")
    check_output(out, directory=True)


class _TrainLog:
    """train_log.jsonl, rewritten atomically on every entry; a resumed run overwrites the
    entries the interrupted run logged after its last checkpoint."""

    def __init__(self, path: Path, keep_existing: bool) -> None:
        self.path = path
        self.entries: list[dict] = []
        if keep_existing and path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            self.entries = [json.loads(line) for line in lines if line.strip()]

    def append(self, entry: dict) -> None:
        self.entries = [e for e in self.entries if e["step"] < entry["step"]] + [entry]
        with atomic_open(self.path) as handle:
            for item in self.entries:
                handle.write(json.dumps(item) + "\n")


def _differences(changes: Sequence[Change]) -> str:
    """What a resumed run changed, by setting: 'lr 5e-05, now 0.001; records 12, now 5'."""
    return "; ".join(change.describe(lambda key: key.split(".")[-1]) for change in changes)


# Settings only the mixture reads: a LoRA baseline trained on the same schedule ignores them.
MIXTURE_ONLY = frozenset(
    {"top_k", "router_init", "kshot_temperature", "load_balancing_coef", "shared_rank",
     "shared_alpha", "router_lr"}
)  # fmt: skip

# Settings added after runs were made, with the value those runs used without recording it.
# A run that lacks one reads as that value, not as today's default: the default may change.
ADDED_LATER: dict[str, object] = {"shared_rank": 0, "shared_alpha": None}


def _default_of(key: str) -> object:
    """The value of a setting a run started before it existed did not record (`config.x`),
    so that run still resumes as long as the setting keeps that value; None otherwise."""
    parent, _, name = key.rpartition(".")
    return value_before(name, MoeTrainConfig, ADDED_LATER) if parent == "config" else None


def _rounded(value):
    return round(value, 6) if isinstance(value, float) else value


def train_mixture(
    model,
    tokenizer,
    records: Sequence[Record],
    out: str | Path,
    config: MoeTrainConfig | None = None,
    *,
    resume: bool = False,
    info: dict | None = None,
) -> dict:
    """Train an attached mixture on `records` and write the mixture directory `out`.

    `out` gets moe_config.json + moe_model.safetensors (loadable by `load_mixture`),
    train_log.jsonl and train_summary.json; `info` (inputs, router-init counts...) goes into
    the summary. With resume=True an interrupted run with the same settings continues.
    """
    from taskexpert.moe.model import freeze_base, mixture_config

    config = config or MoeTrainConfig()
    out = Path(out)
    check_output_dir(out)
    if not records:
        raise InputError("no training records")
    trainable = freeze_base(model)
    moe = mixture_config(model)
    run = {
        "config": config.model_dump(mode="json", exclude={"progress"}),
        "experts": moe.expert_names,
        "records": len(records),
        "data_digest": records_digest(records)[:16],
    }
    stats = {"trainable_parameters": trainable, "moe": moe}
    if not is_main_process():  # rank 0 owns the work directory, checkpoints and output
        return _train_and_save(
            model, tokenizer, records, out, config, work_dir(out), resume, stats, info, False
        )
    rundir = RunDir(work_dir(out), kind="train-moe", remedy="rerun without --resume to start over")
    with rundir.open():
        changes = rundir.changes(run, _default_of) if resume else None
        if changes:
            raise InputError(
                f"the unfinished run there used other settings ({_differences(changes)}); "
                f"{rundir.remedy}",
                rundir.path,
            )
        if changes is None:  # not resuming, or nothing to resume
            rundir.reset()
        rundir.record_identity(run)
        summary = _train_and_save(
            model, tokenizer, records, out, config, rundir.path, resume, stats, info, True
        )
        remove_tree(rundir.path)
    return summary


def _train_and_save(
    model, tokenizer, records, out: Path, config, work: Path, resume: bool, stats: dict, info,
    write: bool,
) -> dict:  # fmt: skip
    """Train (from `work`'s checkpoint when resuming) and, if `write`, write the mixture
    directory `out` whole; `work` is the run directory, locked by the writing process."""
    from taskexpert.moe.checkpoint import save_mixture
    from taskexpert.moe.model import mixture_aux_loss, router_stats
    from taskexpert.train import train

    moe = stats["moe"]
    log = _TrainLog(work / TRAIN_LOG_FILE, keep_existing=resume) if write else None

    def on_log(step: int, metrics: dict) -> None:
        router = router_stats(model)
        entry = {"step": step, **{k: _rounded(v) for k, v in metrics.items()}}
        entry["router_entropy"] = _rounded(router["entropy"])
        entry["router_max_entropy"] = _rounded(router["max_entropy"])
        entry["expert_load"] = {k: round(v, 4) for k, v in router["load"].items()}
        entry["router_tokens"] = router["tokens"]  # real tokens of the last micro-batch
        log.append(entry)

    result = train(
        model,
        tokenizer,
        records,
        config.train_config(checkpoint_dir=work, resume=resume),
        aux_loss=mixture_aux_loss,
        on_log=on_log if log is not None else None,
    )
    final = log.entries[-1] if log is not None and log.entries else {}
    summary = {
        "experts": [e.model_dump(mode="json") for e in moe.experts],
        "top_k": moe.top_k,
        "router_init": moe.router_init,
        "shared_rank": moe.shared_rank,
        "trainable_parameters": stats["trainable_parameters"],
        "records": len(records),
        "train": result.to_dict(),
        "final_router_entropy": final.get("router_entropy"),
        "router_max_entropy": final.get("router_max_entropy"),
        "final_expert_load": final.get("expert_load"),
        "config": config.model_dump(mode="json"),
        **(info or {}),
    }
    if not write:
        return summary
    with atomic_dir(out) as tmp:
        save_mixture(model, tmp)
        if (work / TRAIN_LOG_FILE).is_file():
            shutil.copyfile(work / TRAIN_LOG_FILE, tmp / TRAIN_LOG_FILE)
        write_json(tmp / SUMMARY_FILE, summary)
    return summary
