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
split -> select-experts -> select-data -> leakage -> train/<method>-seed<s> -> best-adapter,
uniform-merge -> eval/<method>[-seed<s>] (a mixture's also holds routing.json, the routing
diagnostics of recipes/routing.py) -> verdict; the winner is copied to final/, and
report.html / report.md are written last.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskexpert.errors import InputError
from taskexpert.io import write_json
from taskexpert.majority import majority_answer
from taskexpert.moe.train import MIXTURE_ONLY
from taskexpert.recipes.common_options import RAY_KEYS
from taskexpert.recipes.report import write_run_report
from taskexpert.recipes.run_config import (
    RUNTIME_KEYS,
    TRAINED,
    RunConfig,
    default_of,
    keyed_settings,
    settings_dict,
)
from taskexpert.recipes.run_dir import RunDirectory, fingerprint, stage_key
from taskexpert.recipes.run_outcome import item_scores, representative_seed, write_final
from taskexpert.recipes.run_split import NEEDS_DATA, Split, check_inputs
from taskexpert.records import load_records, write_records

log = logging.getLogger(__name__)

VERDICT_FILE = "verdict.json"
FINAL_DIR = "final"
NEEDS_EXPERTS = ("moe", "uniform_merge", "best_adapter")
SIMPLER_FIRST = ("base", "best_adapter", "uniform_merge", "kshot_lora", "plain_lora", "moe")


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
        self.leakage: dict[str, Any] | None = None  # leakage.json less its examples

    @property
    def runtime(self) -> dict[str, Any]:
        """How the base loads (every model stage takes these; the Ray keys only selection)."""
        return self.config.runtime.model_dump(exclude=set(RAY_KEYS))

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

    def keyed_on_leakage(self, parts: dict[str, Any]) -> dict[str, Any]:
        """`parts` plus the leakage stage's digest when training reads its cleaned files."""
        return {**parts, "leakage": self.digest("leakage")} if "leakage" in self.kept else parts

    def load_base(self):
        """(model, tokenizer) of the base, loaded as the runtime section says."""
        from taskexpert.models import load_base

        runtime = self.config.runtime
        return load_base(
            self.config.base,
            dtype=runtime.dtype,
            device=runtime.device,
            trust_remote_code=runtime.trust_remote_code,
            allow_pickle=runtime.allow_pickle,
            progress=self.progress,
        )


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
        {
            **config.select_experts.model_dump(),
            **config.runtime.model_dump(),
            "progress": run.progress,
        }
    )

    def build(tmp: Path) -> None:
        # the stage's temp dir is new per attempt; the scores stay where a rerun finds them
        # (keyed by base, adapter, K-shot and scoring settings, so stale ones are not reused)
        run_select_experts(
            config.base,
            config.bank,
            kshot,
            tmp / "experts.json",
            settings,
            scores=run.dir.scores_dir,
        )

    parts = {
        "settings": keyed_settings("select_experts", config.select_experts),
        "runtime": run.runtime,
        "base": run.fingerprints["base"],
        "bank": run.fingerprints["bank"],
        "split": run.digest("split"),
    }
    return run.stage("select-experts", parts, build) / "experts.json"


def selection_warnings(experts: Path | None) -> list[str]:
    """select-experts' warnings, prefixed, for the verdict (none without a selection)."""
    if experts is None:
        return []
    from taskexpert.artifacts import read_experts_document

    return [f"select-experts: {w}" for w in read_experts_document(experts).warnings or []]


def _select_data_stage(run: _Run, kshot: Path) -> Path:
    from taskexpert.recipes.select_data import SelectDataConfig, run_select_data

    config = run.config
    settings = SelectDataConfig.model_validate(
        {
            **config.select_data.model_dump(),
            "device": config.runtime.device,
            **config.runtime.model_dump(include=set(RAY_KEYS)),
        }
    )

    def build(tmp: Path) -> None:
        run_select_data(config.pools, kshot, config.budget, tmp / "selected.jsonl", settings)

    parts = {
        "settings": settings.model_dump(mode="json", exclude={"cache_dir", "use_cache", *RAY_KEYS}),
        "pools": [run.fingerprints[f"pool{k}"] for k in range(len(config.pools))],
        "budget": config.budget,
        "split": run.digest("split"),
    }
    return run.stage("select-data", parts, build) / "selected.jsonl"


def _leakage_stage(run: _Run, test: Path, kshot: Path, data: Path | None
                   ) -> tuple[Path, Path | None]:  # fmt: skip
    """Check the training data against the test split; the K-shot and data to train on."""
    from taskexpert.recipes import leakage

    config = run.config
    select = config.select_data

    def build(tmp: Path) -> None:
        leakage.check_training_data(
            test, kshot, data, tmp, config.leakage, encoder=select.encoder,
            device=config.runtime.device, cache_dir=select.cache_dir, use_cache=select.use_cache,
            progress=run.progress,
        )  # fmt: skip

    parts = {
        "settings": config.leakage.model_dump(mode="json"),
        "encoder": select.encoder,
        "data": run.digest("select-data") if data is not None else None,
        "split": run.digest("split"),
    }
    directory = run.stage("leakage", parts, build)
    summary = json.loads((directory / leakage.LEAKAGE_FILE).read_text())
    run.leakage = {k: v for k, v in summary.items() if k != "examples"}
    run.dir.record("leakage", run.leakage)
    leakage.report_leaks(summary)
    return leakage.training_inputs(directory, kshot, data)


def _train_moe_stage(run: _Run, seed: int, experts: Path, data: Path, kshot: Path) -> Path:
    from taskexpert.moe.train import read_experts_file
    from taskexpert.recipes.train_moe import TrainMoeConfig, run_train_moe

    config = run.config
    settings = TrainMoeConfig.model_validate(
        {**config.train.model_dump(), **run.runtime, "seed": seed, "progress": run.progress}
    )
    chosen = len(read_experts_file(experts).chosen)
    if settings.top_k > chosen:  # selection may keep fewer experts than the config routes to
        log.warning(
            "top_k %d lowered to %d: select-experts chose %d", settings.top_k, chosen, chosen
        )
        settings = settings.model_copy(update={"top_k": chosen})

    def build(tmp: Path) -> None:
        run_train_moe(
            config.base, experts, data, tmp / "model", kshot=kshot, bank=config.bank,
            config=settings,
        )  # fmt: skip

    parts = {
        "settings": keyed_settings("train", config.train, exclude={"progress"}),
        "seed": seed,
        "runtime": run.runtime,
        "base": run.fingerprints["base"],
        "bank": run.fingerprints["bank"],
        "experts": run.digest("select-experts"),
        "data": run.digest("select-data"),
        "split": run.digest("split"),
    }
    parts = run.keyed_on_leakage(parts)
    return run.stage(f"train/moe-seed{seed}", parts, build) / "model"


def _lora_stage(run: _Run, method: str, seed: int, experts: Path, data: Path | None,
                kshot: Path) -> Path:  # fmt: skip
    """A plain LoRA on the mixture's exact data and schedule (or on the K-shot alone)."""
    config = run.config

    def build(tmp: Path) -> None:
        from taskexpert.lora_baselines import train_lora
        from taskexpert.moe.train import read_experts, training_records

        kshot_records = load_records(kshot)
        data_records = load_records(data) if data is not None else []
        records, _ = training_records(kshot_records, data_records, kshot, data)
        adapters = read_experts(experts, bank=config.bank, allow_pickle=config.runtime.allow_pickle)
        model, tokenizer = run.load_base()
        moe_params = _moe_params(run, seed) if method == "plain_lora" else None
        lora = lora_shape(model, adapters, config, moe_params)
        train = config.train.model_copy(
            update={"seed": seed, "progress": run.progress, **_lr(config)}
        ).train_config()
        summary = train_lora(
            model, tokenizer, records, tmp / "adapter",
            rank=lora["rank"], alpha=lora["alpha"], targets=lora["targets"], train=train,
            log=tmp / "train_log.jsonl",
        )  # fmt: skip
        write_json(tmp / "train_summary.json", {**summary, **lora, "records": len(records)})

    parts = {
        # the schedule the LoRA shares with the mixture, not the mixture's own settings
        "train": keyed_settings("train", config.train, exclude={"progress", *MIXTURE_ONLY}),
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
    parts = run.keyed_on_leakage(parts)
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
        from taskexpert.moe.train import expert_paths, read_experts_file

        chosen = expert_paths(read_experts_file(experts), config.bank)
        model, _ = run.load_base()
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
    from taskexpert.recipes.routing import ROUTING_FILE, ROUTING_FORMAT

    config = run.config
    settings = config.evaluate.model_dump(exclude={"metric", *RUNTIME_KEYS})

    def build(tmp: Path) -> None:
        routing = tmp / ROUTING_FILE if model.get("moe") else None  # the mixture's diagnostics
        run_evaluate(
            config.base, test, tmp / "eval.json", **model, **settings, **run.runtime,
            routing=routing, progress=run.progress,
        )  # fmt: skip

    parts = {
        "settings": settings,
        "runtime": run.runtime,
        "base": run.fingerprints["base"],
        "model": run.digest(upstream) if upstream else None,
        "bank": run.fingerprints["bank"] if upstream == "best-adapter" else None,
        "split": run.digest("split"),
    }
    if model.get("moe"):
        parts["routing"] = ROUTING_FORMAT
    return run.stage(f"eval/{name}", parts, build) / "eval.json"


@dataclass
class RunResult:
    """What a finished run returns: the verdict and where everything is."""

    verdict: Any  # taskexpert.verdict.Verdict
    run_dir: Path
    final_dir: Path
    ran: list[str]
    reused: list[str]
    split: dict[str, Any]
    leakage: dict[str, Any] | None = None  # the leakage check's counts, when it ran


def run_method(
    config: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True
) -> RunResult:
    """Run every stage of `config` in `out` (reusing finished ones), write the verdict and
    the winner; refuses a directory made with another config unless `resume`."""
    from taskexpert.verdict import VERDICT_FORMAT, decide

    out = Path(out)
    directory = RunDirectory(out, settings_dict(config), resume=resume, default_of=default_of)
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
        train_kshot = kshot  # the K-shot that training reads (selection reads `kshot`)
        if config.leakage.enabled and methods & set(TRAINED):
            train_kshot, data = _leakage_stage(run, test, kshot, data)
        models: dict[tuple[str, int | None], dict[str, Any]] = {}
        upstream: dict[tuple[str, int | None], str | None] = {}
        for method, seed in plan_methods(config):
            if method == "base":
                models[(method, seed)], upstream[(method, seed)] = {}, None
            elif method == "moe":
                path = _train_moe_stage(run, seed, experts, data, train_kshot)
                models[(method, seed)] = {"moe": path}
                upstream[(method, seed)] = f"train/moe-seed{seed}"
            elif method in ("plain_lora", "kshot_lora"):
                source = data if method == "plain_lora" else None
                path = _lora_stage(run, method, seed, experts, source, train_kshot)
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
        # a tie goes to the simpler method: listed first, it stays first in decide's stable sort
        by_simplicity = {m: scores[m] for m in SIMPLER_FIRST if m in scores}

        def build(tmp: Path) -> None:
            floor = None
            if settings.majority_floor:
                floor = majority_answer(
                    load_records(kshot), load_records(test), config.evaluate.metric
                )
            verdict = decide(
                by_simplicity,
                confidence=settings.confidence,
                resamples=settings.resamples,
                min_items=settings.min_items,
                references={"majority": (floor.scores, floor.detail)} if floor else None,
                winner_rule=settings.winner,
            )
            # what selection had to give up (a lifted filter, a capped K-shot) bears on the
            # verdict: the user reads it there, not only in experts.json
            verdict.warnings += selection_warnings(experts)
            write_json(tmp / VERDICT_FILE, verdict.model_dump(mode="json"))

        parts = {
            "order": list(by_simplicity),  # decides ties
            "format": VERDICT_FORMAT,
            "settings": settings.model_dump(),
            "split": run.digest("split"),  # the floor reads the K-shot and test items
            "evals": {run_name(m, s): run.digest(f"eval/{run_name(m, s)}") for m, s in models},
            "experts": run.digest("select-experts") if experts is not None else None,
        }
        verdict_dir = run.stage("verdict", parts, build)
        from taskexpert.verdict import Verdict

        verdict = Verdict.model_validate_json((verdict_dir / VERDICT_FILE).read_text())
        write_json(out / VERDICT_FILE, verdict.model_dump(mode="json"))
        winner_seed = representative_seed(per_seed[verdict.winner])
        final = write_final(out / FINAL_DIR, config.base, verdict, winner_seed, models)
        directory.drop_stale(run.kept)
    write_run_report(out)  # after the verdict: a failed report is logged, the run stands
    return RunResult(
        verdict=verdict,
        run_dir=out,
        final_dir=final,
        ran=run.ran,
        reused=run.reused,
        split={"source": split.source, "kshot": len(split.kshot), "test": len(split.test)},
        leakage=run.leakage,
    )
