"""Kill -9 and resume, select-experts: scores are kept per model as they are computed, so a
run SIGKILLed while scoring the bank is rerun, scores only what was left, and writes the
experts.json of an uninterrupted run."""

from __future__ import annotations

import copy
import json
import random

import pytest
from expert_helpers import save_random_lora
from kill_resume import assert_json_close, assert_no_partial_files, kill_midway, rerun, without
from tiny_models import make_char_tokenizer, make_tiny_llama

from taskexpert.experts import select as select_module
from taskexpert.experts.scoring import BASE_ROW
from taskexpert.recipes.select_experts import score_dir
from taskexpert.records import Record, write_records

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ADAPTERS = 20
# the same computation in both runs: equal up to float32 summation order
RTOL, ATOL = 1e-5, 1e-7


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny base, a bank of 20 random LoRAs (ranks 2-4) and a 6-item K-shot with rationales."""
    root = tmp_path_factory.mktemp("select_world")
    tokenizer = make_char_tokenizer()
    model = make_tiny_llama(len(tokenizer))
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    for i in range(ADAPTERS):
        targets = ["q_proj", "v_proj"] if i % 2 else ["q_proj", "o_proj"]
        rank = 2 + i % 3
        save_random_lora(
            copy.deepcopy(model), root / "bank" / f"a{i:02d}", seed=i, r=rank,
            lora_alpha=2 * rank, target_modules=targets,
        )  # fmt: skip
    kshot = [
        Record(
            id=f"k{i}",
            instruction=f"What is {i} plus {i % 4}?",
            output=f"{i} plus {i % 4} is {i + i % 4}.\nThe answer is {i + i % 4}.",
            rationale=f"{i} plus {i % 4} is {i + i % 4}.",
            answer=str(i + i % 4),
        )
        for i in range(6)
    ]
    write_records(root / "kshot.jsonl", kshot)
    return root


def command(world, out) -> list:
    return [
        "select-experts", "--base", world / "base", "--bank", world / "bank",
        "--kshot", world / "kshot.jsonl", "--out", out, "--n", "3",
        "--report-variants", "--device", "cpu", "--quiet",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """The uninterrupted run's experts.json."""
    out = tmp_path_factory.mktemp("reference") / "experts.json"
    rerun(command(world, out))
    return json.loads(out.read_text())


def comparable(experts: dict) -> dict:
    """experts.json without what differs between any two runs: the timings."""
    return without(experts, {"seconds"})


@pytest.mark.parametrize(
    "seed, fresh_interpreter", [(0, False), pytest.param(1, True, marks=pytest.mark.slow)]
)
def test_a_killed_run_resumes_to_the_uninterrupted_choice(
    world, reference, tmp_path, monkeypatch, seed, fresh_interpreter
):
    expected = reference
    out = tmp_path / "experts.json"
    work = score_dir(out)
    rng = random.Random(seed)
    target = rng.randint(1, ADAPTERS // 2)  # scores stored (base row included) before the kill
    kill = kill_midway(
        command(world, out),
        lambda: len(list(work.glob("*.json"))) >= target,
        rng=rng,
        # short: adapters share batches (up to 16 at once), so the scores land in two bursts
        # and a longer delay let the second (4 adapters, well under 0.2 s on a quiet machine)
        # finish before the kill
        window=0.02,
        log=tmp_path / "killed.log",
    )
    stored = len(list(work.glob("*.json")))
    kill.where = (
        f"seed {seed}, after {target} scored: {stored} of {ADAPTERS + 1} models scored "
        "(base row included)"
    )
    print(kill)

    # (b) no experts.json yet, and every stored score is whole JSON
    assert not out.exists()
    assert assert_no_partial_files(tmp_path) >= stored > 0
    assert stored < ADAPTERS + 1, "the whole bank was scored before the kill"

    scored = []  # the models the rerun hands to the scorer (which may batch adapters)
    real_score_bank = select_module.score_bank

    def counting(*args, **kwargs):
        scored.extend(args[2])
        scored.extend([BASE_ROW] if kwargs.get("include_base", True) else [])
        return real_score_bank(*args, **kwargs)

    monkeypatch.setattr(select_module, "score_bank", counting)
    rerun(command(world, out), subprocess_log=tmp_path / "rerun.log" if fresh_interpreter else None)

    # (a) the rerun scored only what the killed run had not, and chose as an uninterrupted run
    if not fresh_interpreter:
        assert len(scored) == ADAPTERS + 1 - stored
    result = json.loads(out.read_text())
    assert result["chosen"] == expected["chosen"]
    assert_json_close(comparable(result), comparable(expected), rtol=RTOL, atol=ATOL)
    assert not work.exists()
