"""Scores kept on disk while the bank is scored: reused only under the same inputs, exactly."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from expert_helpers import make_lora_bank

from taskexpert.bank import load_bank
from taskexpert.experts.score_store import ScoreStore
from taskexpert.experts.scoring import (
    BASE_ROW,
    ScoringConfig,
    prepare_kshot,
    score_bank,
)
from taskexpert.experts.select import ExpertSelectionConfig, select_experts
from taskexpert.records import Record

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = ScoringConfig(batch_size=4, max_new_tokens=6, variants=("contrast", "content"))


def kshot(n=4, offset=3):
    return [
        Record(
            id=f"k{i}",
            instruction=f"What is {i} plus {offset}?",
            output=f"{i} plus {offset} is {i + offset}. The answer is {i + offset}.",
            answer=str(i + offset),
            rationale=f"{i} plus {offset} is {i + offset}.",
        )
        for i in range(n)
    ]


def test_a_score_round_trips_exactly_and_only_under_its_key(tmp_path, tiny_llama, char_tokenizer):
    bank = load_bank(make_lora_bank(tmp_path / "bank", tiny_llama), tiny_llama)
    task = prepare_kshot(kshot(), char_tokenizer, CONFIG)
    store = ScoreStore(tmp_path / "scores", tiny_llama, char_tokenizer, task, CONFIG)
    scores = score_bank(tiny_llama, char_tokenizer, bank, task, CONFIG, progress=False)
    alpha = scores["alpha"]
    alpha.rppl, alpha.content_nll = math.inf, [None, *alpha.content_nll[1:]]  # JSON edge cases
    store.put("alpha", bank.adapters["alpha"], alpha)
    store.put(BASE_ROW, None, scores[BASE_ROW])
    again = ScoreStore(tmp_path / "scores", tiny_llama, char_tokenizer, task, CONFIG)
    assert dataclasses.asdict(again.get("alpha", bank.adapters["alpha"])) == dataclasses.asdict(
        alpha
    )
    assert set(again.done(bank.adapters)) == {BASE_ROW, "alpha"}
    # another adapter under the same name, another K-shot, config or base: not reused
    beta_as_alpha = bank.adapters["beta"]
    assert again.get("alpha", beta_as_alpha) is None
    other_task = prepare_kshot(kshot(offset=4), char_tokenizer, CONFIG)
    assert not ScoreStore(tmp_path / "scores", tiny_llama, char_tokenizer, other_task, CONFIG).done(
        bank.adapters
    )
    other_config = dataclasses.replace(CONFIG, batch_size=2)
    assert not ScoreStore(tmp_path / "scores", tiny_llama, char_tokenizer, task, other_config).done(
        bank.adapters
    )
    with torch.no_grad():
        tiny_llama.model.norm.weight[0] += 1e-3
    assert not ScoreStore(tmp_path / "scores", tiny_llama, char_tokenizer, task, CONFIG).done(
        bank.adapters
    )
    # a file that is not a whole score of ours is scored again, not trusted
    path = next((tmp_path / "scores").glob("*.json"))
    path.write_text(json.dumps({"name": "alpha", "key": "other", "score": {}}))
    assert len(again.done(bank.adapters)) == 1


def test_select_experts_reuses_stored_scores_and_chooses_the_same(
    tmp_path, tiny_llama, char_tokenizer, monkeypatch
):
    from taskexpert.experts import select as select_module

    bank = load_bank(make_lora_bank(tmp_path / "bank", tiny_llama), tiny_llama)
    config = ExpertSelectionConfig(n=2, batch_size=4, max_new_tokens=6, progress=False)
    fresh = select_experts(tiny_llama, char_tokenizer, bank, kshot(), config)
    work = tmp_path / "scores"
    # an interrupted run that scored the base row and one adapter
    partial = {"alpha": bank.adapters["alpha"]}
    task = prepare_kshot(kshot(), char_tokenizer, config.scoring())
    store = ScoreStore(work, tiny_llama, char_tokenizer, task, config.scoring())
    score_bank(
        tiny_llama, char_tokenizer, partial, task, config.scoring(), progress=False,
        on_score=lambda name, score: store.put(name, bank.adapters.get(name), score),
    )  # fmt: skip
    assert len(list(work.glob("*.json"))) == 2
    scored = []
    real = select_module.score_bank  # the scorer may batch adapters: spy on what it is given
    monkeypatch.setattr(
        select_module, "score_bank", lambda *a, **k: scored.extend(a[2]) or real(*a, **k)
    )
    resumed = select_experts(tiny_llama, char_tokenizer, bank, kshot(), config, score_dir=work)
    assert scored == ["beta", "gamma"]
    assert resumed.chosen == fresh.chosen and list(resumed.scores) == list(fresh.scores)
    # adapters batched in other groups than the fresh run: the same scores to float tolerance
    for name, score in fresh.scores.items():
        ours = dataclasses.asdict(resumed.scores[name]) | {"seconds": 0}
        theirs = dataclasses.asdict(score) | {"seconds": 0}
        assert ours.keys() == theirs.keys(), name
        for key, value in theirs.items():
            if isinstance(value, float) or (value and isinstance(value, list)
                                            and isinstance(value[0], float)):  # fmt: skip
                assert ours[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (name, key)
            else:
                assert ours[key] == value, (name, key)
    assert len(list(work.glob("*.json"))) == 4
    scored.clear()
    select_experts(tiny_llama, char_tokenizer, bank, kshot(), config, score_dir=work)
    assert scored == []  # everything stored: nothing scored again
