"""Stage 1 end to end on the testbed: the micro build for the plumbing, standard for the truth."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from taskexpert.experts.scoring import BASE_ROW
from taskexpert.recipes.select_experts import run_select_experts

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_select_experts_on_the_micro_testbed(micro_testbed, tmp_path):
    truth = micro_testbed.truth["adapters"]
    usable = [n for n, a in truth.items() if a["kind"] != "foreign"]
    out = tmp_path / "experts.json"
    run_select_experts(
        str(micro_testbed.base_dir),
        micro_testbed.bank_dir,
        micro_testbed.kshot_path("mc_add_quiz"),
        out,
        device="cpu",
        n=4,
        max_new_tokens=12,
        report_variants=True,
        progress=False,
    )
    payload = json.loads(out.read_text())
    assert set(payload["scores"]) == {BASE_ROW, *usable}
    assert set(payload["rejected"]) == {n for n, a in truth.items() if a["kind"] == "foreign"}
    assert "do not fit the base layer" in payload["rejected"]["foreign_add"]
    assert len(payload["chosen"]) == 4 and set(payload["chosen"]) <= set(usable)
    matrix = np.array(payload["similarity"]["matrix"])
    assert np.allclose(matrix, matrix.T) and np.allclose(np.diag(matrix), 1.0)
    for name in usable:
        row = payload["scores"][name]
        assert row["seconds"] > 0 and row["decision"] and "rppl_contrast" in row
    assert payload["kshot"]["with_rationale"] == payload["kshot"]["size"]


STANDARD = Path(os.environ.get("TASKEXPERT_TESTBED", "runs/testbed"))


@pytest.mark.slow
def test_chosen_groups_match_the_standard_testbeds_ground_truth():
    """Issue 4 item 6: every target's group holds an expert of each skill it needs (the
    relevant expert itself or its seed-duplicate, the same family trained with another seed)
    and no blind guesser. Run with the rule that passes on the standard build: the paper's
    reasoning perplexity, the coverage objective, and two filters: adapters that predict the
    K-shot rationales worse than the base, and adapters whose rationales depend on the question
    less than the base's (contrast), are dropped. Without the second filter the format-mimic
    joins mc_add_quiz's group on build 13; the paper's default lets the guessers in. The
    benchmark bench_expert_ablation.py reports those and every other variant."""
    from taskexpert.testbed.build import build_testbed

    testbed = build_testbed(STANDARD, "standard", 0, progress=False)
    truth = testbed.truth
    adapters = truth["adapters"]
    for target, info in truth["targets"].items():
        selection = run_select_experts(
            str(testbed.base_dir),
            testbed.bank_dir,
            testbed.kshot_path(target),
            STANDARD / "selection" / f"{target}.json",
            device="cpu",
            progress=False,
            group_objective="coverage",
            drop_above_base_perplexity=True,
            drop_ungrounded=True,
        )
        for expert in info["relevant_experts"]:
            twins = {n for n, a in adapters.items() if a.get("duplicate_of") == expert}
            assert ({expert} | twins) & set(selection.chosen), (target, expert, selection.reason)
        guessers = [n for n in selection.chosen if adapters[n]["kind"] == "guesser"]
        assert not guessers, (target, guessers)
