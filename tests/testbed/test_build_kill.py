"""Kill -9 and resume, testbed build: a micro build SIGKILLed in any phase leaves only whole
files, keeps what its finished phases (and finished bank adapters) wrote, and the rerun ends
with the files of an uninterrupted build."""

from __future__ import annotations

import json
import random

import pytest
import torch
from kill_resume import (
    assert_json_close,
    assert_no_partial_files,
    cli_env,
    final_files,
    kill_midway,
    rerun,
    temp_entries,
    without,
)
from safetensors.torch import load_file

from taskexpert.testbed.build_state import PHASES, is_complete, phase_outputs

# torch threads pinned by --threads 1 in every run: the same computation, so equal up to
# float32 summation order
RTOL, ATOL = 1e-5, 1e-6
TIMINGS = {"seconds", "timings", "load_average", "tokens_per_second", "finished"}

pytestmark = pytest.mark.slow  # a micro build is ~15 s here, and a kill test needs about three


def command(out) -> list:
    return ["testbed", "build", "--out", out, "--preset", "micro", "--seed", "0", "--threads", "1"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted build, one thread like the killed one, and its phases' seconds."""
    root = tmp_path_factory.mktemp("reference") / "tb"
    rerun([*command(root), "--quiet"])
    return root, json.loads((root / "testbed.json").read_text())["build"]["timings"]


def _finished(root) -> list[str]:
    """The phases whose completion marker (rundir's in-place steps) is on disk."""
    return [p for p in PHASES if (root / ".steps" / p / "COMPLETE.json").is_file()]


def _bank(root) -> list[str]:
    return sorted(p.parent.name for p in root.glob("bank/*/adapter_model.safetensors"))


@pytest.mark.parametrize("seed, fresh_interpreter", [(0, False), (1, True)])
def test_a_killed_build_resumes_to_the_uninterrupted_files(
    reference, tmp_path, seed, fresh_interpreter
):
    ref_root, timings = reference
    root = tmp_path / "tb"
    log = tmp_path / "killed.log"
    rng = random.Random(seed)
    phase = rng.choice(PHASES[:-1])  # killed in this phase (truth takes milliseconds)
    kill = kill_midway(
        command(root),
        lambda: f"testbed: phase {phase} ..." in log.read_text(errors="replace"),
        rng=rng,
        window=0.4 * timings[phase],  # within the phase, whatever the machine's speed
        log=log,
        # the phase log lines are the kill points: the reference's in-process --quiet run
        # left TASKEXPERT_QUIET in this process's environment, which the child would inherit
        env=cli_env(TASKEXPERT_QUIET="0"),
    )
    phases = _finished(root)
    bank = _bank(root)
    kill.where = (
        f"seed {seed}, in phase {phase}: phases done {phases}, bank adapters on disk {len(bank)}"
    )
    print(kill)

    # (b) whole files only; no marker, so nobody may use the build yet
    assert assert_no_partial_files(root) > 0
    assert not is_complete(root) and not (root / ".steps" / "truth" / "COMPLETE.json").exists()
    kept = [p for phase in phases for p in phase_outputs(root, phase) if p.is_file()]
    kept += [root / "bank" / name / "adapter_model.safetensors" for name in bank]
    stamps = {p: p.stat().st_mtime_ns for p in kept}

    rerun_log = tmp_path / "rerun.log" if fresh_interpreter else None
    rerun([*command(root), "--quiet"], subprocess_log=rerun_log)

    # (a) finished phases and adapters were kept, not redone, and the files are the reference's
    assert is_complete(root, "micro", 0)
    assert {p: p.stat().st_mtime_ns for p in kept} == stamps
    assert _finished(root) == list(PHASES)
    ours = {p.relative_to(root) for p in final_files(root)}
    theirs = {p.relative_to(ref_root) for p in final_files(ref_root)}
    assert ours == theirs
    for rel in sorted(theirs):
        mine, ref = root / rel, ref_root / rel
        if rel.suffix == ".safetensors":
            tensors, ref_tensors = load_file(str(mine)), load_file(str(ref))
            assert tensors.keys() == ref_tensors.keys(), rel
            for key, value in ref_tensors.items():
                torch.testing.assert_close(tensors[key], value, rtol=RTOL, atol=ATOL, msg=key)
        elif rel.suffix == ".json":
            actual, expected = json.loads(mine.read_text()), json.loads(ref.read_text())
            # the bank's marker lists the adapters each process trained: a resumed one trains
            # fewer; markers hold checksums of files compared above within float tolerance;
            # a saved tokenizer config records whether its loader ran offline (HF_HUB_OFFLINE
            # as transformers saw it at import): the environment's, not the build's
            drop = TIMINGS | {
                "COMPLETE.json": {"adapters", "files"},
                "tokenizer_config.json": {"local_files_only"},
            }.get(rel.name, set())
            actual, expected = without(actual, drop), without(expected, drop)
            if rel.name == "adapter_config.json":  # PEFT writes a set: order per process
                actual["target_modules"] = sorted(actual["target_modules"])
                expected["target_modules"] = sorted(expected["target_modules"])
            assert_json_close(actual, expected, rtol=RTOL, atol=ATOL)
        else:  # PEFT's model cards name the base by its path
            here = mine.read_bytes().replace(bytes(root), b"<root>")
            assert here == ref.read_bytes().replace(bytes(ref_root), b"<root>"), rel
    assert not temp_entries(root)  # the killed build's temp files were cleared
