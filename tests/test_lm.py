import copy
import math

import pytest
import torch

from taskexpert import lm
from taskexpert.lm import (
    IGNORE_INDEX,
    collate,
    encode_pair,
    generate_and_score,
    generate_greedy,
    mean_nll,
    target_token_nlls,
)


def test_encode_pair_masks_prompt_and_appends_eos(char_tokenizer):
    pair = encode_pair(char_tokenizer, "ab", "cd")
    n_prompt = len(char_tokenizer("ab")["input_ids"])
    assert pair.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert pair.labels[n_prompt:] == pair.input_ids[n_prompt:]
    assert pair.input_ids[-1] == char_tokenizer.eos_token_id


def test_encode_pair_truncates_target_tail_first(char_tokenizer):
    pair = encode_pair(char_tokenizer, "p" * 10, "t" * 100, max_length=40)
    assert len(pair.input_ids) == 40
    assert sum(label != IGNORE_INDEX for label in pair.labels) == 30


def test_mean_nll_is_independent_of_batching_and_padding(char_tokenizer, tiny_llama):
    prompts, targets = ["hi", "a longer prompt here", "x"], ["there", "yes", "a much longer target"]
    batched = mean_nll(tiny_llama, char_tokenizer, prompts, targets, batch_size=3)
    single = [mean_nll(tiny_llama, char_tokenizer, [p], [t])[0] for p, t in zip(prompts, targets)]
    assert all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(batched, single))
    # a random model over ~100 tokens sits near log(vocab)
    assert all(2.0 < v < 8.0 for v in batched)


def test_target_token_nlls_cover_every_target_token_once(char_tokenizer, tiny_llama):
    prompts, targets = ["ab", "abcdef", "a"], ["xyz", "q", "hello"]
    per_token = target_token_nlls(tiny_llama, char_tokenizer, prompts, targets, batch_size=2)
    for prompt, target, nlls in zip(prompts, targets, per_token):
        labelled = [x for x in encode_pair(char_tokenizer, prompt, target).labels if x != -100]
        assert len(nlls) == len(labelled) and all(x > 0 for x in nlls)
    means = mean_nll(tiny_llama, char_tokenizer, prompts, targets, batch_size=1)
    assert means == pytest.approx([sum(x) / len(x) for x in per_token], rel=1e-5)


def test_generate_greedy_matches_unbatched(char_tokenizer, tiny_llama):
    prompts = ["abc", "hello world", "z"]
    batched = generate_greedy(tiny_llama, char_tokenizer, prompts, max_new_tokens=5, batch_size=3)
    single = [
        generate_greedy(tiny_llama, char_tokenizer, [p], max_new_tokens=5)[0] for p in prompts
    ]
    assert batched == single


def test_collate_pads_with_ignored_labels(char_tokenizer):
    pairs = [encode_pair(char_tokenizer, "a", "b"), encode_pair(char_tokenizer, "aaaa", "bbbb")]
    batch = collate(pairs, pad_id=0)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, len(pairs[1].input_ids))
    assert torch.all(batch["labels"][0][batch["attention_mask"][0] == 0] == IGNORE_INDEX)


def test_target_token_nlls_equal_the_full_logits_nll(char_tokenizer, tiny_llama):
    """Logits only from the first target column on (logits_to_keep) give the NLLs that the
    logits of every position give (float32, 1e-5)."""
    prompts, targets = ["ab", "abcdef", "a"], ["xyz", "q", "hello"]
    per_token = target_token_nlls(tiny_llama, char_tokenizer, prompts, targets, batch_size=3)
    for prompt, target, nlls in zip(prompts, targets, per_token):
        pair = encode_pair(char_tokenizer, prompt, target)
        with torch.no_grad():
            logits = tiny_llama(input_ids=torch.tensor([pair.input_ids])).logits[0, :-1]
        labels = torch.tensor(pair.labels[1:])
        full = torch.nn.functional.cross_entropy(logits, labels.clamp(min=0), reduction="none")
        assert nlls == pytest.approx(full[labels != IGNORE_INDEX].tolist(), abs=1e-5)


def test_copies_repeat_each_batch_copy_major(char_tokenizer, tiny_llama):
    prompts, targets = ["ab", "abcdef", "a"], ["xyz", "q", "hello"]
    once = target_token_nlls(tiny_llama, char_tokenizer, prompts, targets, batch_size=2)
    twice = target_token_nlls(tiny_llama, char_tokenizer, prompts, targets, 2, copies=2)
    assert len(twice) == 6
    for a, b in zip(once + once, twice):
        assert a == pytest.approx(b, abs=1e-5)
    texts = generate_greedy(tiny_llama, char_tokenizer, prompts, 4, batch_size=2, copies=3)
    assert texts == generate_greedy(tiny_llama, char_tokenizer, prompts, 4, batch_size=2) * 3


@pytest.mark.parametrize("logits_bytes", [None, 1])
def test_generate_and_score_equals_separate_passes(
    char_tokenizer, tiny_llama, monkeypatch, logits_bytes
):
    """One prompt pass whose cache serves two target sets and generation: the same texts and
    NLLs (1e-5) as generate_greedy and target_token_nlls, with copies; also when a tiny
    logits budget feeds the continuations one column at a time (the cache grows and is
    cropped back per target set)."""
    if logits_bytes is not None:
        monkeypatch.setattr(lm, "LOGITS_BYTES", logits_bytes)
    prompts = ["ab", "abcdef", "a", "what is 3 plus 4?"]
    first, second = ["xyz", "q", "hello", "7"], ["1", "22", "333", "seven"]
    texts, (got_first, got_second) = generate_and_score(
        tiny_llama, char_tokenizer, prompts, [first, second], 6, batch_size=3, copies=2
    )
    assert texts == generate_greedy(tiny_llama, char_tokenizer, prompts, 6, 3, copies=2)
    for targets, got in ((first, got_first), (second, got_second)):
        expected = target_token_nlls(tiny_llama, char_tokenizer, prompts, targets, 3, copies=2)
        assert [len(x) for x in got] == [len(x) for x in expected]
        for a, b in zip(got, expected):
            assert a == pytest.approx(b, abs=1e-5)


def test_finished_rows_leave_the_batch_with_the_same_texts(char_tokenizer, tiny_llama):
    """With a frequent character as EOS, rows finish at different steps and are dropped from
    the batch and its cache; the texts stay generate's (which decodes them at full width)."""
    tokenizer = copy.deepcopy(char_tokenizer)
    prompts = ["ab", "abcdef", "a", "what is 3 plus 4?", "zz", "hello"]
    free = generate_greedy(tiny_llama, tokenizer, prompts, 12, batch_size=6)
    tokenizer.eos_token = free[1].split()[2]  # a token some rows emit early, others not
    expected = generate_greedy(tiny_llama, tokenizer, prompts, 12, batch_size=6)
    assert len({len(t) for t in expected}) > 2  # the rows do finish at different steps
    texts, _ = generate_and_score(tiny_llama, tokenizer, prompts, [["x"] * 6], 12, batch_size=6)
    assert texts == expected
