"""The named bank sources read the real formats (fixtures: a few real lines of each file)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from taskexpert.errors import InputError
from taskexpert.importers.sources import FLAN_TASKS, SOURCES, T0_GROUPS, read_source

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_the_sources_are_the_flan_files_code_alpaca_and_eight_t0_groups():
    assert list(SOURCES)[:7] == list(FLAN_TASKS)
    assert "codealpaca" in SOURCES
    assert [n for n in SOURCES if n.startswith("t0-")] == [f"t0-{g}" for g in T0_GROUPS]
    assert len(T0_GROUPS) == 8
    every = [d for members in T0_GROUPS.values() for d in members]
    assert len(every) == len(set(every)), "a T0 dataset in two groups"


@pytest.mark.parametrize("task", FLAN_TASKS)
def test_a_flan_source_is_its_own_file(task):
    records = list(read_source(task, FIXTURES))
    assert records and {r.source for r in records} == {f"flan_cot/{task}"}


def test_code_alpaca_source():
    records = list(read_source("codealpaca", FIXTURES))
    assert len(records) == 5 and records[0].source == "codealpaca"


def test_a_t0_group_keeps_its_datasets_and_drops_empty_outputs():
    sentiment = list(read_source("t0-sentiment", FIXTURES))
    assert sorted(r.source for r in sentiment) == ["t0/imdb", "t0/rotten_tomatoes"]
    assert list(read_source("t0-topic_classification", FIXTURES)) == []  # trec: empty output
    assert [r.source for r in read_source("t0-summarization", FIXTURES)] == ["t0/xsum"]


def test_a_manifest_dataset_in_no_group_is_an_error(tmp_path):
    shutil.copytree(FIXTURES / "self-instruct", tmp_path / "self-instruct")
    manifest = tmp_path / "self-instruct" / "t0_train_50k_manifest.json"
    data = json.loads(manifest.read_text())
    data["new_template"] = {"dataset": "brand_new_qa", "available": 1, "kept": 1}
    manifest.write_text(json.dumps(data))
    with pytest.raises(InputError, match="brand_new_qa belong to no T0 group"):
        list(read_source("t0-sentiment", tmp_path))


def test_unknown_source_and_missing_data_dir(tmp_path):
    with pytest.raises(InputError, match="unknown source 'nope'"):
        read_source("nope", FIXTURES)
    with pytest.raises(InputError, match="shared data directory not found"):
        read_source("aqua", tmp_path / "absent")
