import copy
import math

import pytest
import torch
from expert_helpers import make_lora_bank
from peft import PeftModel

from taskexpert.bank import load_bank
from taskexpert.errors import InputError
from taskexpert.experts.scoring import (
    BASE_ROW,
    ScoringConfig,
    content_masks,
    perplexity,
    prepare_kshot,
    reasoning_score,
    score_bank,
    score_model,
)
from taskexpert.lm import encode_pair
from taskexpert.records import Record

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def kshot(n=5, rationale=True):
    return [
        Record(
            id=f"k{i}",
            instruction=f"What is {i} plus 3?",
            output=f"{i} plus 3 is {i + 3}. The answer is {i + 3}.",
            answer=str(i + 3),
            rationale=f"{i} plus 3 is {i + 3}." if rationale else None,
        )
        for i in range(n)
    ]


CONFIG = ScoringConfig(batch_size=4, max_new_tokens=6)


def test_targets_and_auto_generation_length(char_tokenizer):
    task = prepare_kshot(kshot(3), char_tokenizer, ScoringConfig())
    assert task.reasoning_targets[1] == "1 plus 3 is 4.\nThe answer is 4."
    assert task.answer_targets[1] == "4" and task.kinds == ["number"] * 3
    assert task.max_new_tokens == int(1.5 * len(task.reasoning_targets[0])) + 8
    assert task.warnings == []


def test_missing_rationales_fall_back_to_vanilla_perplexity_with_a_warning(
    tiny_llama, char_tokenizer
):
    task = prepare_kshot(kshot(4, rationale=False), char_tokenizer, CONFIG)
    assert "falls back to vanilla perplexity" in task.warnings[0]
    score = score_model(tiny_llama, char_tokenizer, task, CONFIG)
    assert score.rppl == pytest.approx(score.ppl, rel=1e-6)
    records = kshot(4)
    records[2].rationale = None
    partial = prepare_kshot(records, char_tokenizer, CONFIG)
    assert partial.warnings == [
        "1 of 4 K-shot records have no rationale (k2); their reasoning perplexity uses the "
        "bare answer"
    ]


def test_missing_answer_names_the_record(char_tokenizer):
    records = kshot(3)
    records[1].answer = None
    with pytest.raises(InputError, match="record 'k1' has no gold answer") as info:
        prepare_kshot(records, char_tokenizer, CONFIG, source="k.jsonl")
    assert info.value.field == "answer" and info.value.line == 2
    with pytest.raises(InputError, match="empty"):
        prepare_kshot([], char_tokenizer, CONFIG)


def test_batched_scores_equal_unbatched(tiny_llama, char_tokenizer):
    task = prepare_kshot(kshot(6), char_tokenizer, CONFIG)
    batched = score_model(tiny_llama, char_tokenizer, task, ScoringConfig(batch_size=6))
    single = score_model(tiny_llama, char_tokenizer, task, ScoringConfig(batch_size=1))
    assert batched.rationale_nll == pytest.approx(single.rationale_nll, abs=1e-5)
    assert batched.answer_nll == pytest.approx(single.answer_nll, abs=1e-5)
    assert batched.generations == single.generations
    assert batched.em == single.em
    assert batched.rppl == pytest.approx(perplexity(batched.rationale_nll), rel=1e-6)
    assert batched.rppl == pytest.approx(
        sum(math.exp(x) for x in batched.rationale_nll) / len(batched.rationale_nll), rel=1e-6
    )


def test_switching_adapters_equals_loading_each_fresh(tmp_path, tiny_llama, char_tokenizer):
    root = make_lora_bank(tmp_path / "bank", tiny_llama)
    bank = load_bank(root, tiny_llama)
    task = prepare_kshot(kshot(4), char_tokenizer, CONFIG)
    pristine = copy.deepcopy(tiny_llama)
    reference = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    scores = score_bank(tiny_llama, char_tokenizer, bank, task, CONFIG, progress=False)
    assert list(scores) == [BASE_ROW, "alpha", "beta", "gamma"]
    for name in bank.names:
        fresh = PeftModel.from_pretrained(copy.deepcopy(pristine), root / name)
        expected = score_model(fresh.eval(), char_tokenizer, task, CONFIG)
        assert scores[name].rationale_nll == pytest.approx(expected.rationale_nll, abs=1e-6)
        assert scores[name].answer_nll == pytest.approx(expected.answer_nll, abs=1e-6)
        assert scores[name].generations == expected.generations
        assert scores[name].seconds > 0
    # adapters differ from the base and from each other
    assert len({round(s.rppl, 6) for s in scores.values()}) == 4
    # the caller's base model comes back untouched: no LoRA layers, same weights and outputs
    assert not any("lora" in n for n, _ in tiny_llama.named_modules())
    for name, param in tiny_llama.named_parameters():
        assert torch.equal(param, reference[name]) and param.requires_grad
    again = score_model(tiny_llama, char_tokenizer, task, CONFIG)
    assert again.rationale_nll == pytest.approx(scores[BASE_ROW].rationale_nll, abs=1e-6)


def test_reserved_base_row_name(tmp_path, tiny_llama, char_tokenizer):
    bank = load_bank(make_lora_bank(tmp_path / "bank", tiny_llama), tiny_llama)
    bank.adapters[BASE_ROW] = bank.adapters.pop("alpha")
    task = prepare_kshot(kshot(2), char_tokenizer, CONFIG)
    with pytest.raises(InputError, match="may not be called"):
        score_bank(tiny_llama, char_tokenizer, bank, task, CONFIG, progress=False)


def test_mismatched_targets_take_another_rationale_and_keep_the_answer(char_tokenizer):
    records = kshot(3)
    records[1].rationale = records[0].rationale  # identical rationales are skipped
    task = prepare_kshot(records, char_tokenizer, ScoringConfig(variants=("contrast",)))
    assert task.mismatch_targets[0] == "2 plus 3 is 5.\nThe answer is 3."
    assert task.mismatch_targets[2] == "0 plus 3 is 3.\nThe answer is 5."
    with pytest.raises(ValueError, match="unknown scoring variant"):
        prepare_kshot(records, char_tokenizer, ScoringConfig(variants=("magic",)))


def test_content_masks_hide_shared_template_runs(char_tokenizer):
    targets = [
        "The letters are a b. So: b a.",
        "The letters are c d. So: d c.",
        "The letters are e f. So: f e.",
    ]
    masks = content_masks(char_tokenizer, targets, min_block=3)
    kept = "".join(ch for ch, keep in zip(targets[0], masks[0]) if keep)
    assert kept.replace(" ", "") == "abba."  # the final lone '.' is shorter than min_block
    assert masks[0][-1] is False  # EOS


def test_reasoning_score_variants(tiny_llama, char_tokenizer):
    config = ScoringConfig(batch_size=4, max_new_tokens=2, variants=("contrast", "content"))
    task = prepare_kshot(kshot(4), char_tokenizer, config)
    score = score_model(tiny_llama, char_tokenizer, task, config)
    assert reasoning_score(score) == score.rppl
    assert reasoning_score(score, "relative", score) == pytest.approx(1.0, rel=1e-6)
    gaps = [a - b for a, b in zip(score.rationale_nll, score.mismatch_nll)]
    assert reasoning_score(score, "contrast") == pytest.approx(perplexity(gaps), rel=1e-6)
    # content NLL by hand: per-token losses of one example, averaged over its content tokens
    pair = encode_pair(char_tokenizer, task.prompts[0], task.reasoning_targets[0])
    logits = tiny_llama(torch.tensor([pair.input_ids])).logits[0, :-1]
    losses = torch.nn.functional.cross_entropy(
        logits, torch.tensor(pair.input_ids[1:]), reduction="none"
    )
    start = pair.labels.index(next(x for x in pair.labels if x != -100)) - 1
    keep = torch.tensor(task.content_masks[0])
    expected = losses[start : start + len(keep)][keep].mean().item()
    assert score.content_nll[0] == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="unknown reasoning-perplexity variant"):
        reasoning_score(score, "magic")


def test_several_adapters_per_batch_match_one_at_a_time(tmp_path, tiny_llama, char_tokenizer):
    """Several adapters per batch and the shared prompt pass (the defaults) against the PEFT
    one-at-a-time separate-passes reference, same adapters: NLLs within 1e-5 (float32 sums in
    another order), the same generations and EM."""
    bank = load_bank(make_lora_bank(tmp_path / "bank", tiny_llama), tiny_llama)
    task = prepare_kshot(kshot(5), char_tokenizer, ScoringConfig(variants=("contrast",)))
    task.max_new_tokens = 6
    old_path = ScoringConfig(batch_size=4, adapters_per_batch=1, share_prompt=False)
    reference = score_bank(tiny_llama, char_tokenizer, bank, task, old_path, progress=False)
    for per_batch, share in ((1, True), (2, False), (2, True), (8, True)):
        grouped = score_bank(
            tiny_llama, char_tokenizer, bank, task,
            ScoringConfig(batch_size=4, adapters_per_batch=per_batch, share_prompt=share),
            progress=False,
        )  # fmt: skip
        assert list(grouped) == list(reference) == [BASE_ROW, "alpha", "beta", "gamma"]
        for name, expected in reference.items():
            got = grouped[name]
            assert got.rationale_nll == pytest.approx(expected.rationale_nll, abs=1e-5)
            assert got.answer_nll == pytest.approx(expected.answer_nll, abs=1e-5)
            assert got.mismatch_nll == pytest.approx(expected.mismatch_nll, abs=1e-5)
            assert got.generations == expected.generations and got.em == expected.em
            assert got.seconds > 0
    assert not any("lora" in n.lower() for n, _ in tiny_llama.named_modules())


def test_groups_shrink_until_one_batchs_kv_cache_fits_the_budget(
    tmp_path, tiny_llama, char_tokenizer, monkeypatch
):
    """2 * layers * kv heads * head dim * tokens * dtype bytes per row; batch_size rows per
    adapter; the group is the most adapters whose batch fits (1 at least)."""
    from taskexpert.experts import scoring

    task = prepare_kshot(kshot(5), char_tokenizer, ScoringConfig())
    cfg = tiny_llama.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = cfg.num_key_value_heads or cfg.num_attention_heads
    tokens = task.longest_pair + task.max_new_tokens
    per_row = 2 * cfg.num_hidden_layers * kv_heads * head_dim * tokens * 4
    assert scoring.kv_cache_bytes_per_row(tiny_llama, tokens) == per_row
    batch = per_row * 4  # batch_size 4 rows per adapter
    for budget, expected in ((batch * 2 + 1, 2), (batch - 1, 1), (batch * 100, 16)):
        config = ScoringConfig(batch_size=4, kv_cache_budget_bytes=budget)
        assert scoring.adapters_per_group(tiny_llama, task, config) == expected
    assert scoring.kv_cache_bytes_per_row(torch.nn.Linear(2, 2), tokens) is None

    bank = load_bank(make_lora_bank(tmp_path / "bank", tiny_llama), tiny_llama)
    sizes = []
    real = scoring.score_group
    monkeypatch.setattr(
        scoring,
        "score_group",
        lambda m, t, group, *a: sizes.append(len(group)) or real(m, t, group, *a),
    )
    task.max_new_tokens = 2
    per_row = scoring.kv_cache_bytes_per_row(tiny_llama, task.longest_pair + 2)
    config = ScoringConfig(batch_size=4, kv_cache_budget_bytes=per_row * 4 * 2)
    scores = score_bank(tiny_llama, char_tokenizer, bank, task, config, progress=False)
    assert sizes == [2, 2] and len(scores) == 4  # base + 3 adapters, two per batch
