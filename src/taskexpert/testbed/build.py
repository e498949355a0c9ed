"""The testbed build's phases: tokenizer -> base -> data -> bank -> baselines -> truth.

Each phase writes its outputs at the fixed paths other code reads (`base/`, `bank/<adapter>/`,
`pool.jsonl`, ...), every file or directory atomically. The run around them (lock, identity,
one completion marker per phase and per bank adapter, resume) is the project's run directory
(`taskexpert.rundir`), driven by `taskexpert.recipes.testbed_build`; build_state.py says what
a rerun may keep. `build_testbed` is the Python entry point.
"""

from __future__ import annotations

import functools
import random
import time
from pathlib import Path

from taskexpert.io import atomic_dir, remove_tree, write_json
from taskexpert.progress import is_quiet, logger
from taskexpert.progress import progress as progress_bar
from taskexpert.records import Record, write_records
from taskexpert.runtime import pin_process_threads, resolve_device
from taskexpert.testbed.bank import AdapterSpec, bank_specs, train_adapter
from taskexpert.testbed.build_state import (
    PHASES,
    adapter_step,
    is_complete,
    run_directory,
)
from taskexpert.testbed.families import FAMILIES, held_out_records, make_record
from taskexpert.testbed.layout import (
    BANK_DIR,
    BASE_DIR,
    CALIBRATION_DIR,
    POOL_FILE,
    POOL_TRUTH_FILE,
    STATE_DIR,
    TASKS_DIR,
    TOKENIZER_DIR,
    TRUTH_FILE,
    Testbed,
)
from taskexpert.testbed.model import (
    build_attention,
    load_built_base,
    make_base_model,
    parameter_count,
)
from taskexpert.testbed.pool import build_pool
from taskexpert.testbed.presets import (
    RECIPE_VERSION,
    Preset,
    adapter_config,
    get_preset,
    recipe_id,
    runnable,
)
from taskexpert.testbed.pretraining import pretraining_records
from taskexpert.testbed.tasks import TARGETS
from taskexpert.testbed.tokenizer import build_tokenizer, corpus_words
from taskexpert.testbed.truth import ground_truth

__all__ = [
    "PHASES",
    "RECIPE_VERSION",
    "build_testbed",
    "ground_truth",
    "is_complete",
    "recipe_id",
]


def _log(message: str, progress: bool) -> None:
    if progress and not is_quiet():
        logger.info(message)


# ---- phases --------------------------------------------------------------------------------


def _vocab_texts(seed: int, per_set: int) -> list[str]:
    rng = random.Random(seed * 7919 + 1)
    texts = ["### Instruction:\n### Input:\n### Response:\nThe answer is"] * 50
    for family in FAMILIES.values():
        for level in ("easy", "full"):
            for templates in (
                family.templates,
                family.alt_templates,
                family.new_templates,
                family.pretrain_templates,
            ):
                for _ in range(per_set):
                    problem = family.draw(rng, level)
                    texts.append(make_record(family, problem, rng.choice(templates), "v").text)
    for target in TARGETS.values():
        for pool in (False, True):
            texts += [r.text for r in target.make(rng, per_set, "train", "v", pool=pool)]
    return texts


def _phase_tokenizer(root: Path, preset: Preset, seed: int, progress: bool) -> dict:
    words = corpus_words(_vocab_texts(seed, preset.vocab_sample))
    tokenizer = build_tokenizer(words)
    with atomic_dir(root / TOKENIZER_DIR) as tmp:
        tokenizer.save_pretrained(str(tmp))
    return {"vocab_size": len(tokenizer), "words": len(words)}


def base_pretraining_records(preset: Preset, seed: int) -> list[Record]:
    """The preset's pretraining mix (pretraining.py says what is in it and why)."""
    return pretraining_records(
        preset.pretrain_records,
        seed,
        full_share=preset.pretrain_full_share,
        canonical_share=preset.pretrain_canonical_share,
        family_weights=preset.pretrain_family_weights,
        pair_share=preset.pretrain_pair_share,
    )


def _phase_base(root: Path, preset: Preset, seed: int, progress: bool) -> dict:
    from transformers import AutoTokenizer

    from taskexpert.train import train

    tokenizer = AutoTokenizer.from_pretrained(str(root / TOKENIZER_DIR))
    model = make_base_model(preset.model, tokenizer, seed, attention=build_attention())
    config = runnable(preset.pretrain).model_copy(update={"seed": seed, "progress": progress})
    result = train(model, tokenizer, base_pretraining_records(preset, seed), config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_dir(root / BASE_DIR) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    return {"parameters": parameter_count(model), "train": result.to_dict()}


def _phase_data(root: Path, preset: Preset, seed: int, progress: bool) -> dict:
    rng = random.Random(seed * 7919 + 3)
    pool, truth = build_pool(
        rng,
        family_total=preset.pool_family_total,
        relevant_per_target=preset.pool_relevant_per_target,
        near_duplicate_share=preset.pool_near_duplicate_share,
        noise_share=preset.pool_noise_share,
    )
    write_records(root / POOL_FILE, pool)
    sizes = {"pool": len(pool)}
    for name, target in TARGETS.items():
        kshot = target.make(rng, preset.kshot, "train", f"{name}-kshot")
        test = target.make(rng, preset.test, "test", f"{name}-test")
        write_records(root / TASKS_DIR / name / "kshot.jsonl", kshot)
        write_records(root / TASKS_DIR / name / "test.jsonl", test)
        sizes[f"{name}.kshot"], sizes[f"{name}.test"] = len(kshot), len(test)
    for name, family in FAMILIES.items():
        records = held_out_records(family, preset.calibration, rng, f"{name}-cal")
        if len(records) < preset.calibration:
            raise RuntimeError(f"family {name}: fewer than {preset.calibration} held-out problems")
        write_records(root / CALIBRATION_DIR / f"{name}.jsonl", records)
    write_json(root / STATE_DIR / POOL_TRUTH_FILE, truth.to_dict())
    return {"sizes": sizes}


@functools.lru_cache(maxsize=1)
def _cached_base(directory: str, stamp: tuple[int, int]):
    """The built base, loaded once per process for as long as its file is unchanged (`stamp`:
    mtime and size); train_lora trains a copy, so the cached model stays as built."""
    return load_built_base(Path(directory))


def _built_base(directory: Path):
    stat = (directory / "model.safetensors").stat()
    return _cached_base(str(directory), (stat.st_mtime_ns, stat.st_size))


def _train_one_adapter(root: Path, preset_name: str, seed: int, name: str) -> dict:
    """Train and save one bank adapter; the unit of work of the bank phase, in or out of
    process. Loads what it needs from disk, so a worker process shares nothing."""
    preset = get_preset(preset_name)
    spec = _specs_by_name(seed, preset)[name]
    model, tokenizer = _built_base(root / BASE_DIR)
    foreign = None
    if spec.kind == "foreign":
        foreign_spec = preset.model.model_copy(update={"hidden": preset.model.hidden + 16})
        foreign = make_base_model(foreign_spec, tokenizer, seed + 1, attention=build_attention())
    began = time.perf_counter()
    # an in-place step of its own: an interrupted bank keeps the adapters it finished
    with run_directory(root).step_in_place(adapter_step(name), {"adapter": name}):
        result = train_adapter(
            spec,
            model,
            foreign,
            tokenizer,
            root / BANK_DIR / spec.name,
            n_records=preset.adapter_records,
            config=adapter_config(preset, spec.kind, spec.families).model_copy(
                update={"progress": False}
            ),
            pair_share=preset.adapter_pair_share,
        )
    return {"seconds": round(time.perf_counter() - began, 2), **result.to_dict()}


def _worker_init() -> None:
    from transformers.utils import logging

    pin_process_threads(1)
    logging.disable_progress_bar()  # a weight-loading bar per adapter is noise


def bank_workers(threads: int) -> int:
    """Processes that train the bank side by side, one torch thread each.

    Measured on the standard model: two one-thread processes train LoRAs 1.25x faster than one
    two-thread process (0.080 against 0.100 s per step), since a model this small leaves a
    second thread half idle. On a GPU, one process.
    """
    return 1 if resolve_device() == "cuda" else max(1, threads)


def _phase_bank(
    root: Path, preset: Preset, seed: int, progress: bool, *, keep_existing: bool, workers: int
) -> dict:

    rundir = run_directory(root)
    if not keep_existing:
        rundir.forget(BANK_DIR)  # the phase's marker and every adapter's
        remove_tree(root / BANK_DIR)
    # an adapter whose marker checks out was finished by an earlier, interrupted run of this
    # phase; one without (killed after writing it, or changed since) is trained again
    todo = [
        s.name
        for s in bank_specs(seed, preset.lora_r, preset.lora_alpha)
        if rundir.finished_in_place(adapter_step(s.name), {"adapter": s.name}, strict=False) is None
    ]
    timings: dict[str, dict] = {}
    bar = progress_bar(total=len(todo), desc="bank", unit="adapter", enabled=progress)
    if workers <= 1:
        from transformers.utils import logging

        shown = logging.is_progress_bar_enabled()
        logging.disable_progress_bar()  # a weight-loading bar per adapter is noise
        try:
            for name in todo:
                timings[name] = _train_one_adapter(root, preset.name, seed, name)
                bar.update(1)
        finally:
            if shown:
                logging.enable_progress_bar()
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        context = multiprocessing.get_context("spawn")  # no forked torch thread pools
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
            futures = {
                pool.submit(_train_one_adapter, root, preset.name, seed, name): name
                for name in todo
            }
            try:
                for future in as_completed(futures):
                    timings[futures[future]] = future.result()
                    bar.update(1)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    bar.close()
    return {"adapters": timings, "workers": workers}


def _phase_baselines(root: Path, preset: Preset, seed: int, progress: bool) -> dict:
    from taskexpert.testbed.baselines import run_baselines

    return run_baselines(root, preset, seed, progress)


def _phase_truth(root: Path, preset: Preset, seed: int, state: dict, threads: int) -> dict:
    truth = ground_truth(root, preset, seed, state, threads)
    write_json(root / TRUTH_FILE, truth)
    return {}


def _specs_by_name(seed: int, preset: Preset) -> dict[str, AdapterSpec]:
    return {s.name: s for s in bank_specs(seed, preset.lora_r, preset.lora_alpha)}


# ---- the entry point -----------------------------------------------------------------------


def build_testbed(
    out: str | Path,
    preset: str = "micro",
    seed: int = 0,
    *,
    force: bool = False,
    progress: bool = True,
    threads: int | None = None,
) -> Testbed:
    """Build (or return the cached, or resume the half-built) testbed in `out`.

    `threads` pins torch's intra-op threads during the build (None: the count follows the
    machine's load while each phase runs; see `runtime.adaptive_threads`).
    The run itself: `taskexpert.recipes.testbed_build.run_testbed_build`.
    """
    from taskexpert.recipes.testbed_build import TestbedBuildConfig, run_testbed_build

    config = TestbedBuildConfig(preset=preset, seed=seed, threads=threads or 0)
    return run_testbed_build(out, config, force=force, progress=progress)
