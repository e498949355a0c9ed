"""testbed.json, the ground truth of a build: which adapters and pool sources each target needs.

Written by the build's last phase from what the earlier ones left (the pool's truth, the
baselines) and from the recipe itself (the bank's specs, the targets, the families); its
schema is in this folder's README.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from taskexpert.records import load_records
from taskexpert.testbed.bank import bank_specs
from taskexpert.testbed.families import FAMILIES
from taskexpert.testbed.layout import (
    BANK_DIR,
    BASE_DIR,
    BASELINES_DIR,
    BASELINES_FILE,
    CALIBRATION_DIR,
    FORMAT_VERSION,
    POOL_FILE,
    POOL_TRUTH_FILE,
    STATE_DIR,
    TASKS_DIR,
)
from taskexpert.testbed.model import build_attention
from taskexpert.testbed.presets import Preset, runnable
from taskexpert.testbed.tasks import TARGETS


def ground_truth(root: Path, preset: Preset, seed: int, state: dict, threads: int) -> dict:
    """testbed.json: the documented schema (README.md in this folder). `threads`: those the
    truth phase itself runs with (the others' are in their phase records)."""
    from importlib.metadata import version

    specs = {s.name: s for s in bank_specs(seed, preset.lora_r, preset.lora_alpha)}
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
