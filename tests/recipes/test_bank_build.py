"""bank build on a tiny Llama and the fixture data: PEFT adapters with training.json, cached,
resumable after a kill, and loadable by the bank loader; another base's adapter is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import save_tiny_base

from taskexpert.bank import load_bank
from taskexpert.errors import InputError
from taskexpert.recipes.bank_build import TRAINING_FILE, BankBuildConfig, run_bank_build

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("base") / "tiny")


def _config(base: Path, **changes) -> BankBuildConfig:
    settings = {
        "base": str(base), "sources": ["strategyqa", "t0-sentiment"], "records": 3,
        "max_steps": 2, "batch_size": 2, "max_length": 96, "rank": 2, "alpha": 4.0,
        "lr": 1e-3, "progress": False,
    }  # fmt: skip
    return BankBuildConfig.model_validate({**settings, **changes})


def test_build_cache_and_resume(tiny_base, tmp_path):
    out = tmp_path / "bank"
    first = run_bank_build(out, _config(tiny_base), FIXTURES)
    assert first["built"] == ["strategyqa", "t0-sentiment"] and first["cached"] == []
    record = json.loads((out / "strategyqa" / TRAINING_FILE).read_text())
    assert record["source"] == "strategyqa" and record["steps"] == 2 and record["seed"] == 0
    assert record["records"] == 3 and len(record["record_ids"]) == 3
    assert len(record["records_sha256"]) == 64 and record["learning_rate"] == 1e-3
    assert record["final_loss"] > 0 and record["mean_logged_loss"] > 0
    assert record["wall_seconds"] >= record["train_seconds"] > 0
    assert record["base_model"]["base"] == str(tiny_base)
    assert (out / "strategyqa" / "adapter_model.safetensors").is_file()
    sentiment = json.loads((out / "t0-sentiment" / TRAINING_FILE).read_text())
    assert sentiment["records"] == 2  # the fixture group has 2 records: all of them

    stamp = (out / "strategyqa" / "adapter_model.safetensors").stat().st_mtime_ns
    again = run_bank_build(out, _config(tiny_base), FIXTURES)
    assert again["built"] == [] and again["cached"] == ["strategyqa", "t0-sentiment"]
    assert (out / "strategyqa" / "adapter_model.safetensors").stat().st_mtime_ns == stamp

    # a build killed after the first adapter: the second is missing, the rerun builds it only
    from taskexpert.io import remove_tree

    remove_tree(out / "t0-sentiment")
    resumed = run_bank_build(out, _config(tiny_base), FIXTURES)
    assert resumed["built"] == ["t0-sentiment"] and resumed["cached"] == ["strategyqa"]

    changed = run_bank_build(out, _config(tiny_base, lr=2e-3), FIXTURES)  # other settings
    assert changed["built"] == ["strategyqa", "t0-sentiment"]

    from taskexpert.models import load_base

    model, _ = load_base(str(tiny_base), progress=False)
    assert sorted(load_bank(out, model, strict=True).names) == ["strategyqa", "t0-sentiment"]


def test_an_adapter_trained_on_another_base_is_refused(tiny_base, tmp_path):
    from taskexpert.models import load_base

    other = save_tiny_base(tmp_path / "other-model", seed=1)
    out = tmp_path / "bank"
    run_bank_build(out, _config(other, sources=["aqua"]), FIXTURES)
    model, _ = load_base(str(tiny_base), progress=False)
    with pytest.raises(InputError, match="trained on base model .*other-model"):
        load_bank(out, model, strict=True)


def test_bad_sources_fail_before_anything_is_built(tiny_base, tmp_path):
    with pytest.raises(InputError, match="unknown source 'gsm9k'"):
        run_bank_build(tmp_path / "b", _config(tiny_base, sources=["gsm9k"]), FIXTURES)
    with pytest.raises(InputError, match="listed twice"):
        run_bank_build(tmp_path / "b", _config(tiny_base, sources=["aqua", "aqua"]), FIXTURES)
    assert not (tmp_path / "b").exists()
