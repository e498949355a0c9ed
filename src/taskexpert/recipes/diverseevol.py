"""DiverseEvol (docs/design.md Stage 4): the model grows its own training subset, round by round.

Round 0 trains on `init` random pool items. Round r >= 1 first selects `per_round` new items
with round r-1's model (K-center greedy on its hidden-state embeddings of the whole pool, or a
baseline: `diverseevol_rounds.STRATEGIES`), then trains on the grown subset, from the base
model by default (`--continue` trains round r-1's model further). This is the reference code's
order: a round's subset is chosen by the previous round's model, so round r's model is the one
trained on round r's subset. Every round's subset and model are kept.

Run directory (`taskexpert.rundir`: lock, identity, markers, leftovers):

    run.json                 version, identity (rerunning with other settings is an error),
                             the config and the taskexpert version that started it
    base_embeddings.npy      the base model's pool embeddings (+ .json marker): Vendi, one-shot
    rounds/NN/               one finished round, built under a temp name and renamed:
        subset.jsonl         the subset trained in this round (selection order)
        selection.json       its pool rows, the rows added this round and how they were chosen
        model/               LoRA adapter or full weights (safetensors)
        summary.json         size, seconds, vendi, exact_match (with --eval), training stats
        eval.json            per-item predictions (with --eval)
        COMPLETE.json        size and sha256 of every file above, written last
    curve.json               all round summaries so far
    leakage.json             with --eval: the pool rows that are evaluation items, never picked
    scratch/                 this round's pool embeddings and training checkpoints

Resume: rerunning the same command continues after the last finished round. A round counts
only with a COMPLETE.json whose checksums match; leftovers of an interrupted round (temp
directories, a round directory without a marker) are discarded and the round is rerun; a
round whose files no longer match their marker is an error, never silently trusted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field, ValidationError, field_validator

from taskexpert.configs import Cli
from taskexpert.errors import InputError
from taskexpert.io import check_output, write_json
from taskexpert.recipes.common_options import RAY_KEYS, RaySettings
from taskexpert.recipes.diverseevol_rounds import STRATEGIES, RoundRunner
from taskexpert.record_file import open_records, take
from taskexpert.records import Record, load_records
from taskexpert.rundir import (
    CorruptStep,
    RunDir,
    corrupt_message,
    file_sha256,
    read_json,
    value_before,
)
from taskexpert.runtime import is_main_process, pinned_threads, share_from_main, world_size
from taskexpert.train import TrainConfig, accumulation

log = logging.getLogger(__name__)

LEAKAGE_FILE = "leakage.json"  # the pool rows left out as --eval items (with --drop-leaked)
LEAK_EXAMPLES = 20  # leakage.json describes this many of them; "rows" lists all

FORMAT_VERSION = 1  # of run.json and the rounds; the layout before the move to rundir.py
# Runtime knobs that never change which items are chosen: they may differ between reruns.
RUNTIME_FIELDS = frozenset(
    {"embed_batch_size", "eval_batch_size", "checkpoint_every", "device", "progress", "threads"}
    | RAY_KEYS  # Ray's K-center picks what one process picks
)
TRAIN_RUNTIME_FIELDS = frozenset({"checkpoint_dir", "checkpoint_every", "resume", "progress"})


LORA_LR, FULL_LR = 2e-4, 2e-5  # the learning rate when none is given: LoRA / every weight


def default_train_config() -> TrainConfig:
    """Three epochs as in the paper; the learning rate suits a LoRA (FULL_LR for --full)."""
    return TrainConfig(epochs=3.0, lr=LORA_LR, batch_size=16, max_length=512)


class _Common(RaySettings):
    """The settings DiverseEvolConfig and DiverseEvolSettings share, written once. The schedule
    defaults are the paper's (100 random, +100 x 10 rounds, restart from the base, last layer,
    Euclidean); training defaults to a LoRA (the paper fine-tunes every weight: `lora=False`),
    which is what fits on one CPU or GPU. The selection defaults are the measured best, not the
    paper's K-center (`--strategy kcenter --outlier-share 0 --loss-outlier-z 0`): k-means
    representatives with the farthest 5% of the pool and the base model's high-loss tail left
    out, which beat K-center on three testbed builds, tied random and kept noise below the
    pool's share (docs/design.md, DiverseEvol). With `ray`, K-center runs on Ray actors (the
    embedding stays on this process)."""

    init: int = Field(100, gt=0, description="Random items trained in round 0.")
    per_round: int = Field(100, gt=0, description="Items added per round.")
    rounds: int = Field(10, gt=0, description="Rounds after round 0 (may grow on a rerun).")
    strategy: str = Field(
        "kmeans",
        description="kmeans (the row nearest each of per_round k-means centroids; measured "
        "best), kcenter (the paper's), random, least-confidence, margin, entropy or "
        "kcenter-oneshot.",
    )
    embed_layer: str = Field("last", description="'last' or a hidden-state index (0: embeddings).")
    outlier_share: float = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description="K-center and k-means never pick this share of the pool: the rows farthest "
        "from a random sample of it (outliers.far_outliers; 0: the paper's K-center).",
    )
    loss_outlier_z: float = Field(
        5.0,
        ge=0.0,
        description="K-center and k-means also never pick the pool records whose loss under "
        "the base model is this many robust deviations above the median (outliers."
        "high_loss_rows; one extra pass over the pool per run; 0: off).",
    )
    restart_from_base: Annotated[
        bool,
        Cli(
            on="--restart-from-base",
            flag="--continue",
            help="Train each round from the base model (paper), or keep training the last one.",
        ),
    ] = Field(True, description="Train each round from the base model (False: the last one).")
    lora: Annotated[
        bool,
        Cli(on="--lora", flag="--full", help="Train a LoRA (default) or every weight."),
    ] = Field(True, description="Train a LoRA (False: every weight, a full fine-tune).")
    lora_r: int = Field(8, gt=0, description="LoRA rank.")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA alpha.")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    lora_targets: str = Field(
        "all-linear", description="'all-linear' or comma-separated module names."
    )
    eval_max_new_tokens: int = Field(64, gt=0, description="Generation length for --eval.")
    drop_leaked: Annotated[
        bool,
        Cli(
            on="--drop-leaked",
            flag="--keep-leaked",
            help="With --eval: never pick a pool record that is an evaluation item.",
        ),
    ] = Field(
        True,
        description="With --eval, no round picks a pool record whose prompt equals an "
        "evaluation item's or shares a 13-word n-gram with one (selection.leakage's exact and "
        "n-gram checks; leakage.json lists them), so no round trains on a test item.",
    )
    seed: int = Field(0, description="Round-0 draw, LoRA init, batches.")
    dtype: str = Field("float32", description="float32, bfloat16 or float16.")
    # runtime only
    embed_batch_size: int = Field(32, gt=0, description="Sequences per embedding/scoring batch.")
    eval_batch_size: int = Field(32, gt=0, description="Sequences per generation batch (--eval).")
    checkpoint_every: int = Field(
        0, ge=0, description="Checkpoint training every N optimizer steps (0: off)."
    )
    device: str = Field("auto", description="auto, cpu, cuda, mps.")
    threads: int | None = Field(
        None, gt=0, description="Torch CPU threads [default: torch's own choice]."
    )
    progress: Annotated[bool, Cli(option=False, file=False)] = True

    @field_validator("embed_layer", mode="before")
    @classmethod
    def _layer_as_text(cls, value: object) -> object:
        return str(value).strip().lower() if isinstance(value, (int, str)) else value


class DiverseEvolConfig(_Common):
    """Every option of a run: the shared settings, the data and the whole TrainConfig."""

    base: str = Field(description="base model directory, or 'smollm2'")
    pool: Path
    train: TrainConfig = Field(default_factory=default_train_config)
    eval: Path | None = None


_TRAIN = default_train_config()


class DiverseEvolSettings(_Common):
    """The diverseevol verb's settings: the shared ones and the few TrainConfig knobs it
    exposes, flat. Its data (--base, --pool, --eval, --out) are plain options."""

    epochs: float = Field(_TRAIN.epochs, description="Training epochs per round.")
    lr: float | None = Field(
        None,
        description=f"Learning rate [default: {LORA_LR:g} for a LoRA, {FULL_LR:g} for --full].",
    )
    batch_size: int = Field(
        _TRAIN.batch_size, gt=0, description="Examples per optimizer step (all processes)."
    )
    micro_batch_size: int | None = Field(
        None, gt=0, description="Examples per forward pass [default: the batch, split over "
        "the processes]; the rest is gradient accumulation.",
    )  # fmt: skip
    max_length: int = Field(_TRAIN.max_length, description="Tokens per example.")

    def run_config(
        self, base: str, pool: str | Path, eval: str | Path | None = None
    ) -> DiverseEvolConfig:
        """The run's config, the knobs folded into TrainConfig; a bad value is an InputError."""
        lr = self.lr if self.lr is not None else (LORA_LR if self.lora else FULL_LR)
        knobs = {"epochs": self.epochs, "lr": lr}
        micro, grad_accum = accumulation(
            self.batch_size, self.micro_batch_size or self.batch_size, world_size()
        )
        knobs |= {"batch_size": micro, "grad_accum": grad_accum, "max_length": self.max_length}
        common = self.model_dump(include=set(_Common.model_fields))
        try:
            train = TrainConfig.model_validate(_TRAIN.model_dump() | knobs)
            return DiverseEvolConfig(base=base, pool=pool, eval=eval, train=train, **common)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = str(error["loc"][0]).replace("_", "-") if error["loc"] else None
            raise InputError(error["msg"], field=field) from None


@dataclass
class DiverseEvolResult:
    """The run directory and every round's summary, in round order."""

    run_dir: Path
    rounds: list[dict] = field(default_factory=list)
    resumed_from: int = 0


# ---- identity --------------------------------------------------------------------------------


def option_name(key: str) -> str:
    """The CLI option behind a flattened identity key, for the mismatch message."""
    special = {
        "restart_from_base": "--restart-from-base/--continue",
        "lora": "--lora/--full",
        "pool_sha256": "--pool",
        "eval_sha256": "--eval",
    }
    leaf = key.split(".")[-1]
    return special.get(leaf, "--" + leaf.replace("_", "-"))


def identity(config: DiverseEvolConfig, pool_sha: str, eval_sha: str | None) -> dict:
    """What decides the subsets and models: the content of pool and eval, not their paths;
    neither --rounds (a rerun may grow the run) nor runtime knobs."""
    data = config.model_dump(mode="json", exclude=set(RUNTIME_FIELDS) | {"pool", "eval", "rounds"})
    data["train"] = {k: v for k, v in data["train"].items() if k not in TRAIN_RUNTIME_FIELDS}
    path = Path(config.base)
    data["base"] = str(path.resolve()) if path.is_dir() else config.base
    data["pool_sha256"], data["eval_sha256"] = pool_sha, eval_sha
    if eval_sha is None:  # without --eval it picks nothing out: runs from before it resume
        data["drop_leaked"] = ADDED_LATER["drop_leaked"]
    return data


# Settings added after runs were made, with the value those runs used without recording it
# (not today's default, which may have changed since).
ADDED_LATER: dict[str, object] = {
    "outlier_share": 0.0,
    "loss_outlier_z": 0.0,
    "drop_leaked": False,
}


def default_of(key: str) -> object:
    """The value a run started before a setting existed had for it (its ADDED_LATER value,
    else the default), so it resumes as long as the setting keeps that value; None if none."""
    *parents, name = key.split(".")
    model = {(): DiverseEvolConfig, ("train",): TrainConfig}.get(tuple(parents))
    return value_before(name, model, {} if parents else ADDED_LATER)


def run_directory(path: str | Path) -> RunDir:
    """The run directory of a DiverseEvol run (format version FORMAT_VERSION)."""
    return RunDir(Path(path), kind="diverseevol", version=FORMAT_VERSION, noun="round")


def check_identity(rundir: RunDir, current: dict) -> None:
    """A rerun must ask for what the run directory holds (only --rounds may change)."""
    rundir.check_identity(current, option_name=option_name, default_of=default_of)


# ---- resume ----------------------------------------------------------------------------------


def finished_rounds(rundir: RunDir, pool: Sequence[Record], config: DiverseEvolConfig) -> list:
    """(summary, rows) of every trustworthy finished round, in order; see the module doc.
    Beyond the markers (rundir), each round's rows must extend the previous round's."""
    finished: list[tuple[dict, list[int]]] = []
    for index, directory in enumerate(rundir.finished_steps("rounds", "round")):
        summary = read_json(directory / "summary.json")
        rows = read_json(directory / "selection.json").get("rows")
        previous = finished[-1][1] if finished else []
        expected = config.init + index * config.per_round
        if (
            not isinstance(rows, list)
            or len(rows) != expected
            or rows[: len(previous)] != previous
            or len(set(rows)) != len(rows)
            or not all(isinstance(i, int) and 0 <= i < len(pool) for i in rows)
        ):
            raise CorruptStep(
                _corrupt(f"its rows do not extend round {index - 1}'s to {expected} pool rows"),
                directory / "selection.json",
            )
        ids = [r.id for r in load_records(directory / "subset.jsonl")]
        if ids != [r.id for r in take(pool, rows)]:
            raise CorruptStep(
                _corrupt("subset.jsonl does not match the pool rows"), directory / "subset.jsonl"
            )
        finished.append((summary, rows))
    if len(finished) > config.rounds + 1:
        raise InputError(
            f"the run directory already holds {len(finished) - 1} rounds, more than --rounds "
            f"{config.rounds}",
            rundir.path / "rounds",
            field="--rounds",
        )
    return finished


def _corrupt(reason: str) -> str:
    return corrupt_message("round", reason)


# ---- input checks ----------------------------------------------------------------------------


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise InputError(
            f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}",
            field="--strategy",
        )


def check_sizes(config: DiverseEvolConfig, pool_size: int, pool_path: Path | None = None,
                leaked: int = 0) -> None:  # fmt: skip
    """The pool, less its records that are --eval items, must hold round 0 plus every round's
    additions."""
    check_strategy(config.strategy)
    pool_size -= leaked
    held = f"{pool_size} records" + (
        f" once the {leaked} that are evaluation items are left out" if leaked else ""
    )
    if pool_size < config.init + config.per_round:
        raise InputError(
            f"the pool has {held}, fewer than --init {config.init} plus one round "
            f"of --per-round {config.per_round}",
            pool_path,
            field="--init",
        )
    needed = config.init + config.rounds * config.per_round
    if needed > pool_size:
        raise InputError(
            f"--init {config.init} + --rounds {config.rounds} x --per-round {config.per_round} "
            f"= {needed} records, more than the pool's {held}",
            pool_path,
            field="--rounds",
        )


def _load_eval(path: Path) -> list[Record]:
    """Evaluation records, each with a gold answer (checked now, not after round 0 trains)."""
    from taskexpert.evaluate import gold_answer
    from taskexpert.prompts import infer_answer_kind

    records = load_records(path)
    for number, record in enumerate(records, start=1):
        try:
            gold_answer(record, infer_answer_kind(record))
        except InputError as exc:
            raise InputError(f"record {number}: {exc.reason}", path, field="answer") from None
    return records


def _check_pool(pool: Sequence[Record], path: Path) -> None:
    for number, record in enumerate(pool, start=1):
        if not record.output.strip():
            raise InputError(
                f"record {number} (id {record.id!r}) has an empty output: nothing to train on",
                path,
                field="output",
            )


# ---- the entry point -------------------------------------------------------------------------


def run_diverseevol(config: DiverseEvolConfig, run_dir: str | Path) -> DiverseEvolResult:
    """Run (or resume) DiverseEvol into `run_dir`; returns every round's summary."""
    run_dir = Path(run_dir)
    check_output(run_dir, directory=True)
    check_strategy(config.strategy)
    pool = open_records(config.pool)  # JSONL: line offsets in memory, records on disk
    check_sizes(config, len(pool), config.pool)
    _check_pool(pool, config.pool)
    eval_records = _load_eval(config.eval) if config.eval else None
    eval_sha = file_sha256(config.eval) if config.eval else None
    current = identity(config, file_sha256(config.pool), eval_sha)
    if not is_main_process():  # under `accelerate launch`: train in step with rank 0
        return _follow(config, run_dir, pool)
    try:
        return _lead(config, run_dir, pool, eval_records, current)
    finally:
        if world_size() > 1:
            share_from_main(None)  # no more rounds: the other processes return


def _follow(config: DiverseEvolConfig, run_dir: Path, pool: Sequence[Record]
            ) -> DiverseEvolResult:  # fmt: skip
    runner = RoundRunner(config, run_dir, pool, None)
    runner.load_base()
    with pinned_threads(config.threads, blas=False):
        runner.follow()
    return DiverseEvolResult(run_dir, [], 0)


def _lead(config: DiverseEvolConfig, run_dir: Path, pool: Sequence[Record],
          eval_records: list[Record] | None, current: dict) -> DiverseEvolResult:  # fmt: skip
    """The run itself (rank 0 of several processes, or the only one)."""
    rundir = run_directory(run_dir)
    # one thread can be many times faster than two on a shared CPU (docs/design.md)
    with rundir.open(), pinned_threads(config.threads, blas=False):
        check_identity(rundir, current)
        finished = finished_rounds(rundir, pool, config)
        result = DiverseEvolResult(run_dir, [s for s, _ in finished], len(finished))
        if len(finished) == config.rounds + 1:
            _write_curve(run_dir, result.rounds)
            return result
        leaked = leaked_rows(config, pool, eval_records, run_dir)
        check_sizes(config, len(pool), config.pool, leaked=len(leaked))
        runner = RoundRunner(config, run_dir, pool, eval_records, leaked)
        runner.load_base()
        rundir.record_identity(current, config=config.model_dump(mode="json"))
        runner.ensure_base_embeddings()
        chosen = finished[-1][1] if finished else []
        for round_index in range(len(finished), config.rounds + 1):
            log.info("round %d: %d rows so far", round_index, len(chosen))
            summary, chosen = runner.run_round(rundir, round_index, chosen)
            result.rounds.append(summary)
            _write_curve(run_dir, result.rounds)
    return result


def leaked_rows(config: DiverseEvolConfig, pool: Sequence[Record],
                eval_records: list[Record] | None, run_dir: Path) -> np.ndarray:  # fmt: skip
    """The pool rows no round may pick, as --drop-leaked asks: those whose prompt is an --eval
    item's (selection.leakage's exact and 13-gram checks, streamed over the pool; its
    embedding check is left out, as it needs the sentence encoder DiverseEvol does not load
    otherwise). Written to leakage.json, so a run shows what it left out."""
    from taskexpert.selection.leakage import EvalIndex, find_leaks

    if not (config.drop_leaked and eval_records):
        return np.empty(0, dtype=np.int64)
    result = find_leaks(pool, EvalIndex(eval_records, cosine=0.0))
    rows = np.array(sorted(result.leaked), dtype=np.int64)
    if len(rows):
        log.info("leakage: %d of %d pool records match --eval items and are never picked",
                 len(rows), result.checked)  # fmt: skip
    examples = [
        {
            "row": leak.index,
            "id": pool[leak.index].id,
            "source": pool[leak.index].source,
            "eval_index": leak.eval_index,
            "reasons": leak.reasons,
        }
        for leak in result.leaks[:LEAK_EXAMPLES]
    ]
    write_json(
        run_dir / LEAKAGE_FILE,
        {
            "checked": result.checked,
            "eval": len(eval_records),
            "counts": result.counts,
            "rows": rows.tolist(),
            "examples": examples,
        },
    )
    return rows


def _write_curve(run_dir: Path, summaries: list[dict]) -> None:
    keep = ("round", "size", "vendi", "exact_match", "exact_match_macro", "seconds")
    write_json(run_dir / "curve.json", [{k: s.get(k) for k in keep if k in s} for s in summaries])
