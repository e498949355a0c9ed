"""`taskexpert run`: the whole method and its baselines in one run directory, then a verdict.

Why baselines in every run: the mixture's margin over one LoRA trained on the same data is
small in the paper (+1 to +3 points, no variance reported) and negative on the testbed, so a
run that only reports the mixture's score cannot tell its user whether the work was worth it.
Every run therefore trains and scores the mixture next to the base model, the best single bank
adapter (chosen on the K-shot, as a user would), the uniform merge of the chosen experts, a
plain LoRA on exactly the mixture's data and schedule, and a K-shot-only LoRA, each trained
method over several seeds, all on the same held-out items, and `verdict` compares them with
bootstrap intervals (taskexpert.verdict).

Stages (each a directory under stages/, reused when its key is unchanged, see run_dir.py):
split -> select-experts -> select-data -> train/<method>-seed<s> -> best-adapter,
uniform-merge -> eval/<method>[-seed<s>] -> verdict; the winner is copied to final/.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskexpert.errors import InputError
from taskexpert.io import atomic_dir, write_json
from taskexpert.recipes.run_config import RUNTIME_KEYS, TRAINED, RunConfig, settings_dict
from taskexpert.recipes.run_dir import RunDirectory, fingerprint, stage_key
from taskexpert.records import Record, load_records, write_records

log = logging.getLogger(__name__)

VERDICT_FILE = "verdict.json"
FINAL_DIR = "final"
WINNER_FILE = "winner.json"
NEEDS_EXPERTS = ("moe", "uniform_merge", "best_adapter")
NEEDS_DATA = ("moe", "plain_lora")


@dataclass(frozen=True)
class Split:
    """The K-shot the run may learn from and the items every method is scored on."""

    kshot: list[Record]
    test: list[Record]
    source: str  # "test set" or "held-out K-shot"


def split_kshot(config: RunConfig) -> Split:
    """The test set when given; else a seeded `holdout` share of the K-shot (never used for
    selection or training). Reads and checks every input file the split needs."""
    kshot = load_records(config.kshot)
    if not kshot:
        raise InputError("no records", config.kshot, field="kshot")
    if config.test is not None:
        test = load_records(config.test)
        if not test:
            raise InputError("the test set has no records", config.test, field="test")
        overlap = {r.id for r in kshot} & {r.id for r in test}
        if overlap:
            raise InputError(
                f"{len(overlap)} test records share an id with the K-shot "
                f"(e.g. {sorted(overlap)[0]!r}): scoring on them would reward memorising",
                config.test,
                field="test",
            )
        return Split(kshot, test, "test set")
    order = sorted(kshot, key=lambda r: r.id)
    random.Random(0).shuffle(order)
    held = round(len(order) * config.holdout)
    if held < 1 or held >= len(order):
        raise InputError(
            f"holdout {config.holdout} of {len(order)} K-shot records leaves an empty part; "
            "give a test set or more K-shot records",
            config.kshot,
            field="holdout",
        )
    test_ids = {r.id for r in order[:held]}
    return Split(
        [r for r in kshot if r.id not in test_ids],
        [r for r in kshot if r.id in test_ids],
        "held-out K-shot",
    )


def check_inputs(config: RunConfig) -> Split:
    """Every input readable and consistent, before anything is written."""
    from taskexpert.recipes.select_data import PoolFiles

    for path, key in ((config.bank, "bank"), (config.kshot, "kshot")):
        if not Path(path).exists():
            raise InputError("not found", path, field=key)
    if config.base != "smollm2" and not Path(config.base).exists():
        raise InputError("base model not found", config.base, field="base")
    for pool in config.pools:
        if not pool.is_file():
            raise InputError("pool file not found", pool, field="pools")
    if config.test is not None and not config.test.is_file():
        raise InputError("test file not found", config.test, field="test")
    split = split_kshot(config)
    if any(m in config.methods for m in NEEDS_DATA):
        size = PoolFiles(config.pools).validate()
        if config.budget > size:
            raise InputError(
                f"budget {config.budget} exceeds the pool size {size}",
                config.pools[0],
                field="budget",
            )
    return split


def plan_methods(config: RunConfig) -> list[tuple[str, int | None]]:
    """(method, seed) of every evaluated model; untrained methods have no seed."""
    runs: list[tuple[str, int | None]] = []
    for method in config.methods:
        if method in TRAINED:
            runs.extend((method, seed) for seed in config.seeds)
        else:
            runs.append((method, None))
    return runs


def run_name(method: str, seed: int | None) -> str:
    return method if seed is None else f"{method}-seed{seed}"


class _Run:
    """One run's state while it executes: the config, its directory and the stage digests."""

    def __init__(self, config: RunConfig, directory: RunDirectory, progress: bool) -> None:
        self.config = config
        self.dir = directory
        self.progress = progress
        self.fingerprints: dict[str, str] = {}
        self.kept: set[str] = set()
        self.ran: list[str] = []
        self.reused: list[str] = []

    @property
    def runtime(self) -> dict[str, Any]:
        return self.config.runtime.model_dump()

    def stage(self, name: str, parts: dict[str, Any], build: Callable[[Path], None]) -> Path:
        """Reuse stage `name` if finished with the same key, else build it; its directory."""
        key = stage_key(parts)
        self.kept.add(name)
        if self.dir.done(name, key):
            log.info("stage %s: reused", name)
            self.reused.append(name)
        else:
            log.info("stage %s: running", name)
            with self.dir.stage(name, key) as tmp:
                build(tmp)
            seconds = self.dir.manifest["stages"][name]["seconds"]
            log.info("stage %s: done in %.1fs", name, seconds)
            self.ran.append(name)
        return self.dir.stage_dir(name)

    def digest(self, name: str) -> str:
        return self.dir.digest(name)


def _split_stage(run: _Run, split: Split) -> Path:
    config = run.config

    def build(tmp: Path) -> None:
        write_records(tmp / "kshot.jsonl", split.kshot)
        write_records(tmp / "test.jsonl", split.test)
        write_json(
            tmp / "split.json",
            {"source": split.source, "kshot": len(split.kshot), "test": len(split.test)},
        )

    parts = {
        "kshot": run.fingerprints["kshot"],
        "test": run.fingerprints.get("test"),
        "holdout": None if config.test else config.holdout,
    }
    return run.stage("split", parts, build)


def _select_experts_stage(run: _Run, kshot: Path) -> Path:
    from taskexpert.recipes.select_experts import SelectExpertsConfig, run_select_experts

    config = run.config
    settings = SelectExpertsConfig.model_validate(
        {**config.select_experts.model_dump(), **run.runtime, "progress": run.progress}
    )

    def build(tmp: Path) -> None:
        run_select_experts(config.base, config.bank, kshot, tmp / "experts.json", settings)

    parts = {
        "settings": config.select_experts.model_dump(mode="json"),
        "runtime": run.runtime,
        "base": run.fingerprints["base"],
        "bank": run.fingerprints["bank"],
        "split": run.digest("split"),
    }
    return run.stage("select-experts", parts, build) / "experts.json"


def _select_data_stage(run: _Run, kshot: Path) -> Path:
    from taskexpert.recipes.select_data import SelectDataConfig, run_select_data

    config = run.config
    settings = SelectDataConfig.model_validate(
        {**config.select_data.model_dump(), "device": config.runtime.device}
    )

    def build(tmp: Path) -> None:
        run_select_data(config.pools, kshot, config.budget, tmp / "selected.jsonl", settings)

    parts = {
        "settings": settings.model_dump(mode="json", exclude={"cache_dir", "use_cache"}),
        "pools": [run.fingerprints[f"pool{k}"] for k in range(len(config.pools))],
        "budget": config.budget,
        "split": run.digest("split"),
    }
    return run.stage("select-data", parts, build) / "selected.jsonl"


def _train_moe_stage(run: _Run, seed: int, experts: Path, data: Path, kshot: Path) -> Path:
    from taskexpert.recipes.train_moe import TrainMoeConfig, run_train_moe

    config = run.config
    settings = TrainMoeConfig.model_validate(
        {**config.train.model_dump(), **run.runtime, "seed": seed, "progress": run.progress}
    )

    def build(tmp: Path) -> None:
        run_train_moe(
            config.base, experts, data, tmp / "model", kshot=kshot, bank=config.bank,
            config=settings,
        )  # fmt: skip

    parts = {
        "settings": config.train.model_dump(mode="json", exclude={"progress"}),
        "seed": seed,
        "runtime": run.runtime,
        "base": run.fingerprints["base"],
        "bank": run.fingerprints["bank"],
        "experts": run.digest("select-experts"),
        "data": run.digest("select-data"),
        "split": run.digest("split"),
    }
    return run.stage(f"train/moe-seed{seed}", parts, build) / "model"


def _lora_stage(run: _Run, method: str, seed: int, experts: Path, data: Path | None,
                kshot: Path) -> Path:  # fmt: skip
    """A plain LoRA on the mixture's exact data and schedule (or on the K-shot alone)."""
    config = run.config

    def build(tmp: Path) -> None:
        from taskexpert.lora_baselines import train_lora
        from taskexpert.models import load_base
        from taskexpert.moe.train import read_experts, training_records

        kshot_records = load_records(kshot)
        data_records = load_records(data) if data is not None else []
        records, _ = training_records(kshot_records, data_records, kshot, data)
        adapters = read_experts(experts, bank=config.bank, allow_pickle=config.runtime.allow_pickle)
        model, tokenizer = load_base(
            config.base,
            dtype=config.runtime.dtype,
            device=config.runtime.device,
            trust_remote_code=config.runtime.trust_remote_code,
            allow_pickle=config.runtime.allow_pickle,
            progress=run.progress,
        )
        moe_params = _moe_params(run, seed) if method == "plain_lora" else None
        lora = lora_shape(model, adapters, config, moe_params)
        train = config.train.model_copy(
            update={"seed": seed, "progress": run.progress, **_lr(config)}
        ).train_config()
        summary = train_lora(
            model, tokenizer, records, tmp / "adapter",
            rank=lora["rank"], alpha=lora["alpha"], targets=lora["targets"], train=train,
        )  # fmt: skip
        write_json(tmp / "train_summary.json", {**summary, **lora, "records": len(records)})

    parts = {
        "train": config.train.model_dump(mode="json", exclude={"progress"}),
        "lora": config.lora.model_dump(mode="json"),
        "seed": seed,
        "runtime": run.runtime,
        "base": run.fingerprints["base"],
        "experts": run.digest("select-experts"),  # the rank and modules follow the experts
        "data": run.digest("select-data") if data is not None else None,
        "split": run.digest("split"),
    }
    if method == "plain_lora" and config.lora.match_moe_params:
        parts["moe"] = run.digest(f"train/moe-seed{seed}")
    return run.stage(f"train/{method}-seed{seed}", parts, build) / "adapter"


def lora_shape(model, adapters, config: RunConfig, moe_params: int | None) -> dict[str, Any]:
    """Rank, alpha and modules of a LoRA baseline: the chosen experts' modules, their rank
    unless `lora.rank` says otherwise, or the rank matching the mixture's parameter count."""
    from taskexpert.lora_baselines import matched_rank

    targets = sorted({name for adapter in adapters for name in adapter.target_modules})
    rank = config.lora.rank or max(r for adapter in adapters for r in adapter.ranks)
    if moe_params is not None:
        rank = matched_rank(model, moe_params, targets)
    alpha = config.lora.alpha or 2.0 * rank
    return {"rank": rank, "alpha": alpha, "targets": targets}


def _lr(config: RunConfig) -> dict[str, float]:
    return {"lr": config.lora.lr} if config.lora.lr is not None else {}


def _moe_params(run: _Run, seed: int) -> int | None:
    """The mixture's trainable parameter count (for a parameter-matched plain LoRA)."""
    if not run.config.lora.match_moe_params:
        return None
    summary = run.dir.stage_dir(f"train/moe-seed{seed}") / "model" / "train_summary.json"
    if not summary.is_file():
        raise InputError(
            "lora.match_moe_params needs the mixture trained first: keep 'moe' in methods",
            field="lora.match_moe_params",
        )
    return int(json.loads(summary.read_text())["trainable_parameters"])


def _best_adapter_stage(run: _Run, experts: Path) -> Path:
    def build(tmp: Path) -> None:
        from taskexpert.artifacts import read_experts_document
        from taskexpert.lora_baselines import best_adapter

        name = best_adapter(read_experts_document(experts))
        write_json(tmp / "best.json", {"adapter": name, "chosen_by": "K-shot exact match"})

    parts = {"experts": run.digest("select-experts"), "bank": run.fingerprints["bank"]}
    directory = run.stage("best-adapter", parts, build)
    return _bank_adapter(run.config, json.loads((directory / "best.json").read_text())["adapter"])


def _bank_adapter(config: RunConfig, name: str) -> Path:
    from taskexpert.bank import bank_entries

    for entry_name, path, _ in bank_entries(config.bank):
        if entry_name == name:
            return Path(path)
    raise InputError(f"adapter {name!r} is no longer in the bank", config.bank, field="bank")


def _uniform_merge_stage(run: _Run, experts: Path) -> Path:
    config = run.config

    def build(tmp: Path) -> None:
        from taskexpert.lora_baselines import uniform_merge
        from taskexpert.models import load_base
        from taskexpert.moe.train import expert_paths, read_experts_file

        chosen = expert_paths(read_experts_file(experts), config.bank)
        model, _ = load_base(
            config.base,
            dtype=config.runtime.dtype,
            device=config.runtime.device,
            trust_remote_code=config.runtime.trust_remote_code,
            allow_pickle=config.runtime.allow_pickle,
            progress=run.progress,
        )
        uniform_merge(model, chosen, tmp / "adapter")

    parts = {
        "experts": run.digest("select-experts"),
        "bank": run.fingerprints["bank"],
        "base": run.fingerprints["base"],
    }
    return run.stage("uniform-merge", parts, build) / "adapter"


def _eval_stage(run: _Run, name: str, test: Path, model: dict[str, Any], upstream: str | None
                ) -> Path:  # fmt: skip
    from taskexpert.recipes.evaluate import run_evaluate

    config = run.config
    settings = config.evaluate.model_dump(exclude={"metric", *RUNTIME_KEYS})

    def build(tmp: Path) -> None:
        run_evaluate(
            config.base, test, tmp / "eval.json", **model, **settings, **run.runtime,
            progress=run.progress,
        )  # fmt: skip

    parts = {
        "settings": settings,
        "runtime": run.runtime,
        "base": run.fingerprints["base"],
        "model": run.digest(upstream) if upstream else None,
        "bank": run.fingerprints["bank"] if upstream == "best-adapter" else None,
        "split": run.digest("split"),
    }
    return run.stage(f"eval/{name}", parts, build) / "eval.json"


def item_scores(report: dict, metric: str) -> list[float]:
    """One 0/1 score per test item: option scoring where a record has choices (auto)."""
    scores = []
    for prediction in report["predictions"]:
        if metric == "multiple_choice" or (metric == "auto" and "mc_correct" in prediction):
            if "mc_correct" not in prediction:
                raise InputError(
                    f"record {prediction['id']!r} has no choices to score "
                    "(evaluate.metric: multiple_choice)",
                    field="evaluate.metric",
                )
            scores.append(float(prediction["mc_correct"]))
        else:
            scores.append(float(prediction["correct"]))
    return scores


def _representative(scores: dict[int | None, float]) -> int | None:
    """The seed whose score is the median of the method's seeds (no cherry-picking the best
    seed on the test items)."""
    middle = statistics.median_low(scores.values())
    return next(seed for seed, score in scores.items() if score == middle)


def _write_final(run: _Run, winner: str, seed: int | None, models: dict) -> Path:
    """The winner in a form PEFT or taskexpert loads back, with winner.json saying how."""
    final = run.dir.path / FINAL_DIR
    model = models[(winner, seed)]
    with atomic_dir(final) as tmp:
        info: dict[str, Any] = {"method": winner, "seed": seed, "base": run.config.base}
        if model.get("adapter"):
            shutil.copytree(model["adapter"], tmp / "adapter")
            info["load"] = "PeftModel.from_pretrained(base_model, 'final/adapter')"
            info["kind"] = "peft-lora"
        elif model.get("moe"):
            shutil.copytree(model["moe"], tmp / "moe")
            info["load"] = "taskexpert.moe.load_mixture(base_model, 'final/moe')"
            info["kind"] = "taskexpert-moe"
        else:
            info["kind"] = "base-model"
            info["load"] = "the base model itself: nothing to load"
        write_json(tmp / WINNER_FILE, info)
    return final


@dataclass
class RunResult:
    """What a finished run returns: the verdict and where everything is."""

    verdict: Any  # taskexpert.verdict.Verdict
    run_dir: Path
    final_dir: Path
    ran: list[str]
    reused: list[str]
    split: dict[str, Any]


def run_method(
    config: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True
) -> RunResult:
    """Run every stage of `config` in `out` (reusing finished ones), write the verdict and
    the winner; refuses a directory made with another config unless `resume`."""
    from taskexpert.verdict import decide

    out = Path(out)
    directory = RunDirectory(out, settings_dict(config), resume=resume)
    directory.check_reusable()  # before reading big inputs: a wrong --out fails at once
    split = check_inputs(config)
    inputs = {
        "base": fingerprint(config.base),
        "bank": fingerprint(config.bank),
        "kshot": fingerprint(config.kshot),
        **{f"pool{k}": fingerprint(p) for k, p in enumerate(config.pools)},
    }
    if config.test is not None:
        inputs["test"] = fingerprint(config.test)
    with directory.open(inputs, config.seeds):
        run = _Run(config, directory, progress)
        run.fingerprints = inputs
        split_dir = _split_stage(run, split)
        kshot, test = split_dir / "kshot.jsonl", split_dir / "test.jsonl"
        log.info("evaluating on %d items (%s)", len(split.test), split.source)
        methods = set(config.methods)
        experts = data = None
        if methods & {*NEEDS_EXPERTS, "plain_lora", "kshot_lora"}:
            experts = _select_experts_stage(run, kshot)
        if methods & set(NEEDS_DATA):
            data = _select_data_stage(run, kshot)
        models: dict[tuple[str, int | None], dict[str, Any]] = {}
        upstream: dict[tuple[str, int | None], str | None] = {}
        for method, seed in plan_methods(config):
            if method == "base":
                models[(method, seed)], upstream[(method, seed)] = {}, None
            elif method == "moe":
                path = _train_moe_stage(run, seed, experts, data, kshot)
                models[(method, seed)] = {"moe": path}
                upstream[(method, seed)] = f"train/moe-seed{seed}"
            elif method in ("plain_lora", "kshot_lora"):
                source = data if method == "plain_lora" else None
                path = _lora_stage(run, method, seed, experts, source, kshot)
                models[(method, seed)] = {"adapter": path}
                upstream[(method, seed)] = f"train/{method}-seed{seed}"
            elif method == "best_adapter":
                models[(method, seed)] = {"adapter": _best_adapter_stage(run, experts)}
                upstream[(method, seed)] = "best-adapter"
            elif method == "uniform_merge":
                models[(method, seed)] = {"adapter": _uniform_merge_stage(run, experts)}
                upstream[(method, seed)] = "uniform-merge"
        scores: dict[str, list[list[float]]] = {}
        per_seed: dict[str, dict[int | None, float]] = {}
        for (method, seed), model in models.items():
            name = run_name(method, seed)
            path = _eval_stage(run, name, test, model, upstream[(method, seed)])
            values = item_scores(json.loads(path.read_text()), config.evaluate.metric)
            scores.setdefault(method, []).append(values)
            per_seed.setdefault(method, {})[seed] = sum(values) / len(values)
        settings = config.verdict

        def build(tmp: Path) -> None:
            verdict = decide(
                scores,
                confidence=settings.confidence,
                resamples=settings.resamples,
                min_items=settings.min_items,
            )
            write_json(tmp / VERDICT_FILE, verdict.model_dump(mode="json"))

        parts = {
            "settings": settings.model_dump(),
            "evals": {run_name(m, s): run.digest(f"eval/{run_name(m, s)}") for m, s in models},
        }
        verdict_dir = run.stage("verdict", parts, build)
        from taskexpert.verdict import Verdict

        verdict = Verdict.model_validate_json((verdict_dir / VERDICT_FILE).read_text())
        write_json(out / VERDICT_FILE, verdict.model_dump(mode="json"))
        winner_seed = _representative(per_seed[verdict.winner])
        final = _write_final(run, verdict.winner, winner_seed, models)
        directory.drop_stale(run.kept)
    return RunResult(
        verdict=verdict,
        run_dir=out,
        final_dir=final,
        ran=run.ran,
        reused=run.reused,
        split={"source": split.source, "kshot": len(split.kshot), "test": len(split.test)},
    )
