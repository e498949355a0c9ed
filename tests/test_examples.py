"""The configs shipped under examples/ still load with today's settings: a renamed or removed
setting breaks them here, not on a user's first run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from taskexpert.recipes.bank_build import BankBuildConfig
from taskexpert.recipes.run_config import load_run_config

EXAMPLES = Path(__file__).parents[1] / "examples"
REAL = sorted((EXAMPLES / "real").glob("*.yaml"))
BASELINES = {"base", "best_adapter", "uniform_merge", "plain_lora"}


def test_every_real_target_has_a_config():
    assert [p.stem for p in REAL] == ["arc_challenge", "arc_easy", "boolq", "gsm8k"]


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.stem)
def test_real_target_configs_load_and_compare_the_mixture_with_every_baseline(path):
    config = load_run_config(path)
    assert config.base == "smollm2"
    assert "moe" in config.methods and BASELINES <= set(config.methods)
    assert len(config.seeds) == 2
    assert config.test is not None and config.test.name == "test.jsonl"
    # ARC is scored as lm-evaluation-harness scores it: by the options' text
    expected = "text" if path.stem.startswith("arc") else "answer"
    assert config.evaluate.mc_style == expected


def test_the_real_bank_config_loads():
    data = yaml.safe_load((EXAMPLES / "bank" / "smollm2.yaml").read_text())
    config = BankBuildConfig.model_validate(data)
    assert config.base == "smollm2"
