"""Calibration and the expected shape of the baseline table on the `standard` testbed (slow).

Builds `standard` into a temp dir (about 15 minutes on a quiet 2-core machine), or checks an
existing build named by the environment variable TASKEXPERT_TESTBED.
"""

import os

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def standard(tmp_path_factory):
    from taskexpert.testbed import Testbed, build_testbed

    existing = os.environ.get("TASKEXPERT_TESTBED")
    if existing:
        testbed = Testbed.load(existing)
        assert testbed.truth["build"]["preset"] == "standard"
        return testbed
    return build_testbed(tmp_path_factory.mktemp("standard"), "standard", 0, progress=False)


def test_sizes(standard):
    assert standard.truth["pool"]["size"] >= 20_000
    for name in standard.targets:
        sources = standard.truth["targets"][name]["relevant_sources"]
        assert sum(standard.truth["pool"]["sources"][s] for s in sources) >= 200


def test_each_expert_beats_its_family_and_the_base_does_not(standard):
    for family, scores in standard.truth["calibration"].items():
        assert scores["expert"] >= 0.8, (family, scores)
        assert scores["base"] <= 0.3, (family, scores)


def test_two_skill_targets_need_more_than_one_adapter(standard):
    truth = standard.truth
    for name, target in truth["targets"].items():
        if target["kind"] != "two_skill":
            continue
        scores = truth["baselines"][name]
        single = max(v for a, v in scores.items() if a in truth["adapters"] and v is not None)
        assert single <= 0.3, (name, scores)
        assert scores["ceiling_lora"] >= 0.7, (name, scores)
        assert scores["ceiling_lora"] - single >= 0.3


def test_relevant_expert_beats_base_on_known_family_targets(standard):
    truth = standard.truth
    for name, target in truth["targets"].items():
        if target["kind"] != "known_family":
            continue
        scores = truth["baselines"][name]
        best = max(scores[e] for e in target["relevant_experts"])
        assert best >= scores["base"] + 0.3, (name, scores)


def test_blind_guessers_have_high_reasoning_perplexity(standard):
    truth = standard.truth
    for name, target in truth["targets"].items():
        rppl = truth["kshot_rppl"][name]
        for guesser in target["guessers"]:
            if truth["adapters"][guesser]["data"] == "mimic":
                continue  # the format-mimic is built to come close (issue 4's harder trap)
            for expert in target["relevant_experts"]:
                assert rppl[guesser] > 2 * rppl[expert], (name, guesser, rppl)
