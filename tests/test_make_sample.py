from collections import Counter
from pathlib import Path

from taskexpert.data import SAMPLE_KSHOT, SAMPLE_POOL
from taskexpert.data.make_sample import make_sample, source_group, sqrt_quotas
from taskexpert.records import load_records

FIXTURES = Path(__file__).parent / "fixtures"


def test_shipped_sample_is_valid_mixed_and_small():
    pool, kshot = load_records(SAMPLE_POOL), load_records(SAMPLE_KSHOT)
    assert 1900 <= len(pool) <= 2100 and SAMPLE_POOL.stat().st_size < 1_500_000
    groups = Counter(source_group(r) for r in pool)
    flan = {g for g in groups if g.startswith("flan_cot/")}
    assert len(flan) == 7 and {"t0", "codealpaca", "self_instruct/seed"} <= set(groups)
    assert all(r.output.strip() and r.source for r in pool)
    assert len(kshot) == 20 and all(r.id.startswith("gsm8k-train-") for r in kshot)
    assert all(r.rationale and r.answer and r.source == "gsm8k" for r in kshot)
    questions = {" ".join(r.instruction.split()) for r in kshot}
    assert not any(" ".join(r.instruction.split()) in questions for r in pool)


def test_sqrt_quotas_fill_total_and_respect_sizes():
    quotas = sqrt_quotas({"big": 10_000, "mid": 100, "tiny": 1}, 150)
    assert sum(quotas.values()) == 150 and quotas["tiny"] == 1  # capped at its size
    assert quotas["big"] > quotas["mid"] > quotas["tiny"]
    assert sqrt_quotas({"a": 4, "b": 9}, 100) == {"a": 4, "b": 9}


def test_make_sample_is_deterministic(tmp_path):
    first = make_sample(FIXTURES, tmp_path / "a", size=12, kshot=2, seed=3)
    make_sample(FIXTURES, tmp_path / "b", size=12, kshot=2, seed=3)
    assert sum(first.values()) == 12
    for name in ("pool.jsonl", "gsm8k_kshot.jsonl", "README.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert len(load_records(tmp_path / "a" / "gsm8k_kshot.jsonl")) == 2
