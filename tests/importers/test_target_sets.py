"""targets make: seeded, disjoint, byte-for-byte reproducible K-shot and test files that the
run's scorability check accepts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from taskexpert.errors import InputError
from taskexpert.importers.target_sets import TARGETS, make_targets
from taskexpert.recipes.run_split import check_scorable
from taskexpert.records import load_records

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture()
def data_dir(tmp_path):
    root = tmp_path / "data"
    for folder in ("llm-foundry-eval", "rocket-arc-kshot", "gsm8k"):
        shutil.copytree(FIXTURES / folder, root / folder)
    return root


def _bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.jsonl"))}


def test_sizes_disjoint_and_scorable(data_dir, tmp_path):
    summary = make_targets(data_dir, tmp_path / "t", seed=3, kshot=2, gsm8k_test=2)
    sizes = summary["targets"]
    assert list(sizes) == list(TARGETS)
    assert sizes["arc_challenge"] == {"kshot": 2, "test": 5}  # rocket K-shot, the whole test file
    assert sizes["arc_easy"] == {"kshot": 2, "test": 3}  # 5 items carved 2 + 3
    assert sizes["boolq"] == {"kshot": 2, "test": 2}
    assert sizes["gsm8k"] == {"kshot": 2, "test": 2}
    for name in TARGETS:
        kshot = load_records(tmp_path / "t" / name / "kshot.jsonl")
        test = load_records(tmp_path / "t" / name / "test.jsonl")
        assert not {r.id for r in kshot} & {r.id for r in test}
        for metric in ("auto", "exact_match"):
            check_scorable(test, tmp_path / "t" / name / "test.jsonl", metric)
    arc = load_records(tmp_path / "t" / "arc_challenge" / "kshot.jsonl")
    assert all(r.rationale and r.choices for r in arc)  # the 50-shot with rationales
    gsm = load_records(tmp_path / "t" / "gsm8k" / "test.jsonl")
    assert all(r.answer.lstrip("-").isdigit() for r in gsm)


def test_same_seed_same_bytes_other_seed_other_carving(data_dir, tmp_path):
    make_targets(data_dir, tmp_path / "a", seed=1, kshot=2, gsm8k_test=2)
    make_targets(data_dir, tmp_path / "b", seed=1, kshot=2, gsm8k_test=2)
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "b")
    carvings = set()
    for seed in range(6):
        make_targets(data_dir, tmp_path / f"s{seed}", seed=seed, kshot=2, targets=["arc_easy"])
        carvings.add((tmp_path / f"s{seed}" / "arc_easy" / "kshot.jsonl").read_bytes())
    assert len(carvings) > 1


def test_one_target_does_not_change_another(data_dir, tmp_path):
    make_targets(data_dir, tmp_path / "all", seed=0, kshot=2, gsm8k_test=2)
    make_targets(data_dir, tmp_path / "one", seed=0, kshot=2, gsm8k_test=2, targets=["boolq"])
    assert (tmp_path / "all/boolq/test.jsonl").read_bytes() == (
        tmp_path / "one/boolq/test.jsonl"
    ).read_bytes()


def test_bad_requests(data_dir, tmp_path):
    with pytest.raises(InputError, match="asked for 9 items, the file has 5"):
        make_targets(data_dir, tmp_path / "x", kshot=9, targets=["arc_easy"])
    assert not (tmp_path / "x" / "arc_easy").exists()  # nothing written
    with pytest.raises(InputError, match="unknown target 'mmlu'"):
        make_targets(data_dir, tmp_path / "x", targets=["mmlu"])


def test_test_size_caps_the_test_set_and_keeps_the_kshot(data_dir, tmp_path):
    make_targets(data_dir, tmp_path / "all", seed=0, kshot=2, targets=["arc_easy"])
    summary = make_targets(
        data_dir, tmp_path / "cap", seed=0, kshot=2, targets=["arc_easy"], test_size=2
    )
    assert summary["targets"]["arc_easy"] == {"kshot": 2, "test": 2}
    assert summary["test_size"] == 2
    full = {r.id for r in load_records(tmp_path / "all/arc_easy/test.jsonl")}
    capped = {r.id for r in load_records(tmp_path / "cap/arc_easy/test.jsonl")}
    assert capped < full  # a subset of the uncapped test set
    assert (tmp_path / "all/arc_easy/kshot.jsonl").read_bytes() == (
        tmp_path / "cap/arc_easy/kshot.jsonl"
    ).read_bytes()
    with pytest.raises(InputError, match="test_size must be at least 1"):
        make_targets(data_dir, tmp_path / "bad", targets=["arc_easy"], test_size=0)
