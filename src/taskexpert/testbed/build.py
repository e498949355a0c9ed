"""Build the testbed in phases, each written atomically and recorded, so a build is cached,
resumable and never mistaken for complete when it is not.

Phases: tokenizer -> base -> data -> bank -> baselines -> truth. `.build/state.json` records
the finished phases with the build's fingerprint (preset, seed, format version); the marker
`.complete` is written last. A call with the same preset and seed on a complete directory
returns at once; on a half-built one it resumes at the first phase whose record or files are
missing (bank adapters already on disk are kept) and redoes every phase after it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import random
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from taskexpert.errors import InputError
from taskexpert.io import atomic_dir, is_temp_name, remove_tree, write_json
from taskexpert.progress import is_quiet, logger
from taskexpert.progress import progress as progress_bar
from taskexpert.records import Record, load_records, write_records
from taskexpert.runtime import auto_threads, pin_process_threads, pinned_threads, resolve_device
from taskexpert.testbed.bank import AdapterSpec, bank_specs, train_adapter
from taskexpert.testbed.families import FAMILIES, held_out_records, make_record
from taskexpert.testbed.layout import (
    BANK_DIR,
    BASE_DIR,
    BASELINES_DIR,
    BASELINES_FILE,
    CALIBRATION_DIR,
    MARKER,
    POOL_FILE,
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
from taskexpert.testbed.presets import Preset, get_preset, runnable
from taskexpert.testbed.pretraining import pretraining_records
from taskexpert.testbed.tasks import TARGETS
from taskexpert.testbed.tokenizer import build_tokenizer, corpus_words

FORMAT_VERSION = 1  # the layout and testbed.json schema
# Bump when generated content changes without a preset change (families, pool, pretraining
# mix, bank recipes), so that an older build is rebuilt rather than reused as if current.
# 2: option-walk multiple choice, two-task records for the experts.
# 3: fixed-option multiple choice (mc_add ranges, mc_vowels), easy level only in pretraining.
# 4: initials pretrained at the easy level only; training with eager attention on CPU.
RECIPE_VERSION = 4
PHASES = ("tokenizer", "base", "data", "bank", "baselines", "truth")
STATE_FILE = "state.json"
LOCK_FILE = ".lock"
PROBE_FILE = ".write_probe"
POOL_TRUTH_FILE = "pool_truth.json"


def recipe_id(preset: Preset) -> str:
    """What the build's content depends on besides the seed: the preset and the recipe."""
    text = json.dumps({"recipe": RECIPE_VERSION, "preset": preset.model_dump(mode="json")})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _fingerprint(preset: Preset, seed: int) -> dict:
    return {
        "preset": preset.name,
        "seed": seed,
        "format": FORMAT_VERSION,
        "recipe": recipe_id(preset),
    }


def _log(message: str, progress: bool) -> None:
    if progress and not is_quiet():
        logger.info(message)


@contextmanager
def _exclusive(root: Path):
    """One build per directory at a time: a second caller waits, then finds it cached."""
    handle = open(root / LOCK_FILE, "a+")  # noqa: SIM115 - held for the whole build
    try:
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        except ImportError:  # no advisory locks on this platform: run unguarded
            pass
        yield
    finally:
        handle.close()


# ---- state ---------------------------------------------------------------------------------


def _read_state(root: Path) -> dict | None:
    path = root / STATE_DIR / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _phase_outputs(root: Path, phase: str) -> list[Path]:
    """Files whose presence a finished phase guarantees (checked before trusting it)."""
    if phase == "tokenizer":
        return [root / TOKENIZER_DIR / "tokenizer.json"]
    if phase == "base":
        return [root / BASE_DIR / "model.safetensors", root / BASE_DIR / "tokenizer.json"]
    if phase == "data":
        files = [root / POOL_FILE, root / STATE_DIR / POOL_TRUTH_FILE]
        for name in TARGETS:
            files += [
                root / TASKS_DIR / name / "kshot.jsonl",
                root / TASKS_DIR / name / "test.jsonl",
            ]
        return files + [root / CALIBRATION_DIR / f"{name}.jsonl" for name in FAMILIES]
    if phase == "bank":
        return [root / BANK_DIR / s.name / "adapter_model.safetensors" for s in bank_specs(0, 1, 1)]
    if phase == "baselines":
        return [root / BASELINES_FILE]
    return [root / TRUTH_FILE]


def _check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / PROBE_FILE
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"cannot write the testbed here ({exc.strerror or exc})", root) from None


def _refuse_foreign(root: Path) -> None:
    """Never build into, or leave a lock file in, a directory that holds something else."""
    # what a build killed before its state was saved may have left: the lock, the write
    # probe, temp entries of atomic writes and removals
    ours = {LOCK_FILE, PROBE_FILE}
    has_content = root.is_dir() and any(
        p.name not in ours and not is_temp_name(p.name) for p in root.iterdir()
    )
    if _read_state(root) is None and has_content and not (root / STATE_DIR).is_dir():
        raise InputError(
            "directory is not empty and is not a testbed build; choose another --out", root
        )


def _prepare(root: Path, fingerprint: dict, force: bool) -> dict:
    """The state to resume from; refuses to touch a directory that is not this build's."""
    _refuse_foreign(root)
    state = _read_state(root)
    if state is not None and state.get("fingerprint") != fingerprint:
        if not force:
            old = state.get("fingerprint", {})
            same = (old.get("preset"), old.get("seed")) == (
                fingerprint["preset"],
                fingerprint["seed"],
            )
            what = (
                "was built by an older testbed recipe"
                if same
                else f"holds a testbed built with preset {old.get('preset')!r} "
                f"seed {old.get('seed')}"
            )
            raise InputError(
                f"{what} (pass force=True / --force to rebuild it, or choose another --out)", root
            )
        state = None
    if state is None or force:
        for name in (MARKER, TRUTH_FILE, BASELINES_FILE, POOL_FILE):
            (root / name).unlink(missing_ok=True)
        # the state directory goes last: a build killed in here is still recognised as ours
        for name in (TOKENIZER_DIR, BASE_DIR, BANK_DIR, BASELINES_DIR, TASKS_DIR, CALIBRATION_DIR):
            remove_tree(root / name)
        remove_tree(root / STATE_DIR)
        state = {"fingerprint": fingerprint, "phases": {}}
    return state


def _clear_leftovers(root: Path) -> None:
    """Remove the temp files and directories of a killed build (we hold the lock, so no other
    build is writing them); finished files never carry a temp name."""
    for directory, dirs, files in os.walk(root):
        for name in [d for d in dirs if is_temp_name(d)]:
            dirs.remove(name)
            shutil.rmtree(Path(directory) / name, ignore_errors=True)
        for name in files:
            if is_temp_name(name):
                (Path(directory) / name).unlink(missing_ok=True)


def _save_state(root: Path, state: dict) -> None:
    write_json(root / STATE_DIR / STATE_FILE, state)


def is_complete(root: Path, preset: str | None = None, seed: int | None = None) -> bool:
    """True if `root` holds a finished build (of this preset and seed, when given)."""
    root = Path(root)
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if preset is not None and marker.get("preset") != preset:
        return False
    if seed is not None and marker.get("seed") != seed:
        return False
    if marker.get("format") != FORMAT_VERSION:
        return False
    if preset is not None and marker.get("recipe") != recipe_id(get_preset(preset)):
        return False  # built by another version of the recipe: rebuild, do not reuse
    return all(p.exists() for phase in PHASES for p in _phase_outputs(root, phase))


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
    result = train_adapter(
        spec,
        model,
        foreign,
        tokenizer,
        root / BANK_DIR / spec.name,
        n_records=preset.adapter_records,
        config=runnable(preset.adapter).model_copy(update={"progress": False}),
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

    if not keep_existing:
        remove_tree(root / BANK_DIR)
    # an adapter on disk was written atomically by an earlier, interrupted run of this phase
    todo = [
        s.name
        for s in bank_specs(seed, preset.lora_r, preset.lora_alpha)
        if not (root / BANK_DIR / s.name / "adapter_model.safetensors").is_file()
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


# ---- ground truth --------------------------------------------------------------------------


def _specs_by_name(seed: int, preset: Preset) -> dict[str, AdapterSpec]:
    return {s.name: s for s in bank_specs(seed, preset.lora_r, preset.lora_alpha)}


def ground_truth(root: Path, preset: Preset, seed: int, state: dict, threads: int) -> dict:
    """testbed.json: the documented schema (README.md in this folder). `threads`: those the
    truth phase itself runs with (the others' are in their phase records)."""
    from importlib.metadata import version

    specs = _specs_by_name(seed, preset)
    pool_truth = json.loads((root / STATE_DIR / POOL_TRUTH_FILE).read_text())
    baselines = json.loads((root / BASELINES_FILE).read_text())
    targets = {}
    for name, target in TARGETS.items():
        skills = set(target.skills)
        primary = [f"expert_{s}" for s in target.skills]
        related = [
            n
            for n, s in specs.items()
            if n not in primary
            and s.kind in ("duplicate", "scaled", "mixture")
            and skills & set(s.families)
        ]
        guessers = [n for n, s in specs.items() if s.kind == "guesser" and skills & set(s.families)]
        sources = [target.pool_source] + (
            list(target.skills) if target.kind == "known_family" else []
        )
        kshot = load_records(root / TASKS_DIR / name / "kshot.jsonl")
        from taskexpert.prompts import infer_answer_kind

        targets[name] = {
            "kind": target.kind,
            "description": target.description,
            "skills": list(target.skills),
            "answer_kind": infer_answer_kind(kshot[0]),
            "relevant_experts": primary,
            "also_relevant": related,
            "guessers": guessers,
            "relevant_sources": sources,
            "skill_sources": list(target.skills),
            "kshot": f"{TASKS_DIR}/{name}/kshot.jsonl",
            "test": f"{TASKS_DIR}/{name}/test.jsonl",
        }
    sizes = {}
    for phase in state["phases"].values():
        sizes.update(phase.get("sizes", {}))
    base_info = state["phases"].get("base", {})
    used_threads = {p: v["threads"] for p, v in state["phases"].items() if "threads" in v}
    used_threads["truth"] = threads
    return {
        "schema_version": FORMAT_VERSION,
        "paths": {
            "base": BASE_DIR,
            "bank": BANK_DIR,
            "pool": POOL_FILE,
            "tasks": TASKS_DIR,
            "calibration": CALIBRATION_DIR,
            "baseline_adapters": BASELINES_DIR,
        },
        "targets": targets,
        "adapters": {name: spec.truth() for name, spec in specs.items()},
        "families": {
            name: {
                "answer_kind": f.kind,
                "skill": f.skill,
                "calibration": f"{CALIBRATION_DIR}/{name}.jsonl",
            }
            for name, f in FAMILIES.items()
        },
        "pool": pool_truth,
        "baselines": baselines["targets"],
        "calibration": baselines["calibration"],
        "kshot_rppl": baselines["kshot_rppl"],
        "build": {
            "seed": seed,
            "preset": preset.name,
            "preset_config": json.loads(preset.model_dump_json()),
            "sizes": {
                **sizes,
                "adapters": len(specs),
                "vocab": state["phases"].get("tokenizer", {}).get("vocab_size"),
                "base_parameters": base_info.get("parameters"),
            },
            "timings": {p: round(v.get("seconds", 0.0), 2) for p, v in state["phases"].items()},
            "pretraining": base_info.get("train"),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "threads": max(used_threads.values()),  # the most any phase used
            "phase_threads": used_threads,
            "bank_workers": state["phases"].get("bank", {}).get("workers"),
            "precision": runnable(preset.pretrain).mixed_precision,
            "attention": build_attention(),
            "versions": {
                "python": platform.python_version(),
                "torch": version("torch"),
                "transformers": version("transformers"),
                "peft": version("peft"),
            },
        },
    }


# ---- orchestration -------------------------------------------------------------------------


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

    `threads` pins torch's intra-op threads during the build (None: each phase takes every
    core if the machine is quiet as it starts, one if it is busy; see `auto_threads`).
    """
    spec = get_preset(preset)
    root = Path(out)
    fingerprint = _fingerprint(spec, seed)
    if not force and is_complete(root, preset, seed):
        return Testbed.load(root)
    _refuse_foreign(root)
    _check_writable(root)
    with _exclusive(root):
        if not force and is_complete(root, preset, seed):
            return Testbed.load(root)  # built by another process while we waited
        state = _prepare(root, fingerprint, force)
        _clear_leftovers(root)
        (root / MARKER).unlink(missing_ok=True)
        # given: every phase runs with it. Else each phase asks again as it starts (issue 20:
        # picked once on a busy machine, it kept a quiet one at 1 thread for the whole build)
        # and records what it ran with, so testbed.json reports what was used.
        count: dict[str, int] = {}  # the current phase's, set as it starts
        rerun = {"earlier": False}  # once a phase reruns, every later phase reruns too
        runners: dict[str, Callable[[], dict]] = {
            "tokenizer": lambda: _phase_tokenizer(root, spec, seed, progress),
            "base": lambda: _phase_base(root, spec, seed, progress),
            "data": lambda: _phase_data(root, spec, seed, progress),
            "bank": lambda: _phase_bank(
                root,
                spec,
                seed,
                progress,
                keep_existing=not rerun["earlier"],
                workers=bank_workers(count["threads"]) if spec.parallel_bank else 1,
            ),
            "baselines": lambda: _phase_baselines(root, spec, seed, progress),
            "truth": lambda: _phase_truth(root, spec, seed, state, count["threads"]),
        }
        for phase in PHASES:
            done = phase in state["phases"] and all(p.exists() for p in _phase_outputs(root, phase))
            if done and not rerun["earlier"]:
                continue
            for later in PHASES[PHASES.index(phase) :]:
                state["phases"].pop(later, None)
            _save_state(root, state)
            if PHASES.index(phase) < PHASES.index("bank"):
                # adapters trained on the old base must go now, not when the bank phase
                # starts: a build killed in between would resume and keep them
                remove_tree(root / BANK_DIR)
            count["threads"] = threads or auto_threads()
            _log(f"testbed: phase {phase} ...", progress)
            began = time.perf_counter()
            with pinned_threads(count["threads"], blas=False):
                info = runners[phase]()
            info["seconds"] = time.perf_counter() - began
            info["threads"] = count["threads"]
            state["phases"][phase] = info
            _save_state(root, state)
            took = f"{info['seconds']:.1f}s on {info['threads']} thread(s)"
            _log(f"testbed: phase {phase} done in {took}", progress)
            rerun["earlier"] = True
        finished = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json(root / MARKER, {**fingerprint, "finished": finished})
    return Testbed.load(root)
