"""The run's leakage stage on the micro testbed: a test item planted in the K-shot and in the
pool is counted, named in leakage.json and the manifest, and kept out of training; with
`drop: false` it is counted, warned about and trained on; disabled, the stage is gone."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from taskexpert.recipes.run import run_method
from taskexpert.recipes.run_config import RunConfig
from taskexpert.recipes.run_example import example_for_testbed
from taskexpert.records import load_records, write_records

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TARGET = "mc_add_quiz"
SMALL = {
    "seeds": [0],
    "budget": 24,
    "methods": ["plain_lora"],
    "runtime": {"device": "cpu"},
    "select_experts": {"n": 2, "max_new_tokens": 12},
    "select_data": {"use_cache": False},
    "train": {"max_steps": 2, "batch_size": 4, "micro_batch_size": 2, "lr": 1e-3},
    "evaluate": {"max_new_tokens": 12},
    "verdict": {"resamples": 200},
}
LEAKAGE_KEYS = {"checked", "counts", "dropped", "drop", "thresholds", "examples"}


def planted_config(testbed, tmp_path, **changes) -> RunConfig:
    """The micro config with test item 0 copied into the K-shot and item 1 into the pool."""
    data = example_for_testbed(testbed.root, TARGET).model_dump(mode="json")
    test = load_records(data["test"])
    kshot = load_records(data["kshot"])
    pool = load_records(data["pools"][0])
    planted_kshot = test[0].model_copy(update={"id": "planted-kshot"})
    planted_pool = test[1].model_copy(update={"id": "planted-pool"})
    write_records(tmp_path / "kshot.jsonl", [*kshot, planted_kshot])
    write_records(tmp_path / "pool.jsonl", [planted_pool, *pool])
    data.update(kshot=str(tmp_path / "kshot.jsonl"), pools=[str(tmp_path / "pool.jsonl")])
    for key, value in {**SMALL, **changes}.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return RunConfig.model_validate(data)


def ids(path) -> set[str]:
    return {r.id for r in load_records(path)}


@pytest.fixture(scope="module")
def planted_run(micro_testbed, tmp_path_factory):
    """A finished run with the default check (drop: true); tests copy its directory."""
    import torch

    root = tmp_path_factory.mktemp("leakage")
    out = root / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # set up before the function-scoped one_torch_thread applies
    try:
        result = run_method(planted_config(micro_testbed, root), out, progress=False)
    finally:
        torch.set_num_threads(before)
    return root, out, result


def resumed(planted_run, tmp_path, testbed, **changes):
    """A copy of the planted run, resumed with `changes`: (result, run directory)."""
    root, out, _ = planted_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    config = planted_config(testbed, root, **changes)
    return run_method(config, copy, resume=True, progress=False), copy


def test_planted_test_items_are_counted_dropped_and_reported(planted_run):
    from taskexpert.commands.run import report as printed

    _, out, result = planted_run
    stages = out / "stages"
    selected = ids(stages / "select-data" / "selected.jsonl")
    assert "planted-pool" in selected  # the precondition: retrieval picked the planted item
    report = json.loads((stages / "leakage" / "leakage.json").read_text())
    assert set(report) == LEAKAGE_KEYS
    assert report["checked"] == {"selected": 24, "kshot": 9, "eval": 6}
    assert report["thresholds"] == {"ngram": 13, "cosine": 0.95}
    assert report["drop"] is True
    assert report["counts"]["exact"] == 2
    assert report["counts"]["any"] >= 2 and report["dropped"] == report["counts"]["any"]
    exact = [e for e in report["examples"] if "exact" in e["reasons"]]
    # the planted K-shot record is the K-shot's last (index 8), the pool's ranks first
    assert [(e["source"], e["index"], e["eval_index"]) for e in exact] == [
        ("kshot", 8, 0),
        ("selected", 0, 1),
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["leakage"] == {k: v for k, v in report.items() if k != "examples"}
    assert result.leakage == manifest["leakage"]
    any_ = report["counts"]["any"]
    assert f"leakage: {any_} of 33 training records match test items (exact 2," in printed(result)
    assert f"; {any_} dropped" in printed(result)
    assert "leakage" in manifest["stages"]

    cleaned_kshot = ids(stages / "leakage" / "kshot.jsonl")
    cleaned_selected = ids(stages / "leakage" / "selected.jsonl")
    assert "planted-kshot" not in cleaned_kshot and "planted-pool" not in cleaned_selected
    assert ids(stages / "split" / "kshot.jsonl") >= {"planted-kshot"}  # selection's K-shot
    experts = json.loads((stages / "select-experts" / "experts.json").read_text())
    assert experts["kshot"]["size"] == 9  # select-experts saw the K-shot unchanged
    summary = json.loads((stages / "train/plain_lora-seed0/train_summary.json").read_text())
    assert summary["records"] == len(cleaned_kshot | cleaned_selected)
    assert summary["records"] == 9 + 24 - report["dropped"]


def test_with_drop_false_leaks_are_counted_warned_about_and_trained_on(
    planted_run, micro_testbed, tmp_path, caplog
):
    caplog.set_level(logging.WARNING, logger="taskexpert.recipes.leakage")
    result, out = resumed(planted_run, tmp_path, micro_testbed, leakage={"drop": False})
    stages = out / "stages"
    assert "leakage" in result.ran and "train/plain_lora-seed0" in result.ran
    assert "select-data" in result.reused  # selection does not depend on the check
    report = json.loads((stages / "leakage" / "leakage.json").read_text())
    assert report["drop"] is False and report["dropped"] == 0
    assert report["counts"]["exact"] == 2
    assert not (stages / "leakage" / "kshot.jsonl").exists()
    summary = json.loads((stages / "train/plain_lora-seed0/train_summary.json").read_text())
    assert summary["records"] == 9 + 24
    assert any("kept because leakage.drop is false" in r.message for r in caplog.records)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["leakage"]["drop"] is False


def test_disabled_check_has_no_stage_and_trains_on_the_raw_files(
    planted_run, micro_testbed, tmp_path
):
    result, out = resumed(planted_run, tmp_path, micro_testbed, leakage={"enabled": False})
    stages = out / "stages"
    assert "train/plain_lora-seed0" in result.ran  # the key no longer names the check
    manifest = json.loads((out / "manifest.json").read_text())
    assert "leakage" not in manifest and "leakage" not in manifest["stages"]
    assert not (stages / "leakage").exists()
    summary = json.loads((stages / "train/plain_lora-seed0/train_summary.json").read_text())
    assert summary["records"] == 9 + 24


def test_a_file_that_is_all_leaks_is_an_error_naming_it(tmp_path):
    from taskexpert.errors import InputError
    from taskexpert.recipes.leakage import check_training_data
    from taskexpert.records import Record
    from taskexpert.selection.leakage import LeakageConfig

    items = [Record(id=f"t{k}", instruction=f"What is {k} + {k}?", output=str(2 * k))
             for k in range(3)]  # fmt: skip
    write_records(tmp_path / "test.jsonl", items)
    write_records(tmp_path / "kshot.jsonl", items)  # the test file given as the K-shot
    settings = LeakageConfig(cosine=0)
    (tmp_path / "out").mkdir()
    with pytest.raises(InputError, match="nothing left to train on") as error:
        check_training_data(tmp_path / "test.jsonl", tmp_path / "kshot.jsonl", None,
                            tmp_path / "out", settings)  # fmt: skip
    assert str(error.value.path) == str(tmp_path / "kshot.jsonl")
    assert not any((tmp_path / "out").iterdir())  # nothing written
    report = check_training_data(
        tmp_path / "test.jsonl", tmp_path / "kshot.jsonl", None, tmp_path / "out",
        settings.model_copy(update={"drop": False}),
    )  # fmt: skip
    assert report["counts"] == {"exact": 3, "ngram": 3, "embedding": 0, "any": 3}
    assert report["checked"] == {"selected": 0, "kshot": 3, "eval": 3}
