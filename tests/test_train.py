import copy
import math

import pytest
import torch
from pydantic import ValidationError

from taskexpert.errors import InputError
from taskexpert.records import Record
from taskexpert.train import TrainConfig, train, trainable_state


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models train faster on one thread, and much faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _records(n: int = 8) -> list[Record]:
    words = ["alpha", "bravo", "delta", "gamma", "kilo", "lima", "oscar", "tango"]
    return [
        Record(id=str(i), instruction=f"say {i}", output=words[i % len(words)]) for i in range(n)
    ]


def _config(**kw) -> TrainConfig:
    base = dict(max_steps=6, lr=1e-2, batch_size=4, progress=False, seed=3, schedule="constant")
    base.update(kw)
    return TrainConfig(**base)


def test_loss_goes_down_on_a_memorisable_set(char_tokenizer, tiny_llama):
    result = train(tiny_llama, char_tokenizer, _records(), _config(max_steps=30))
    assert result.steps == 30
    assert sum(result.losses[-5:]) / 5 < 0.5 * sum(result.losses[:5]) / 5
    assert result.tokens_per_second > 0
    assert not tiny_llama.training


def test_prompt_tokens_do_not_contribute(char_tokenizer, tiny_llama):
    losses = []
    for instruction in ["short", "a completely different and much longer prompt"]:
        model = copy.deepcopy(tiny_llama)
        # lr 0: the loss is a pure function of the labelled (response) tokens given the prompt;
        # compare the gradients-free first loss with the loss computed on the output alone.
        rec = [Record(id="0", instruction=instruction, output="xyz")]
        result = train(model, char_tokenizer, rec, _config(max_steps=1, lr=1e-12))
        losses.append(result.losses[0])
        n_response = len(char_tokenizer("xyz", add_special_tokens=False)["input_ids"]) + 1
        from taskexpert.lm import collate, encode_pair
        from taskexpert.prompts import format_prompt

        pair = encode_pair(char_tokenizer, format_prompt(rec[0], char_tokenizer), "xyz")
        assert sum(label != -100 for label in pair.labels) == n_response
        batch = collate([pair], char_tokenizer.pad_token_id)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"]).logits[0, :-1]
        labels = batch["labels"][0, 1:]
        manual = torch.nn.functional.cross_entropy(logits[labels != -100], labels[labels != -100])
        assert abs(float(manual) - result.losses[0]) < 1e-3


def test_only_requires_grad_parameters_change(char_tokenizer, tiny_llama):
    for name, param in tiny_llama.named_parameters():
        param.requires_grad = "lm_head" in name
    frozen = {n: p.clone() for n, p in tiny_llama.named_parameters() if not p.requires_grad}
    train(tiny_llama, char_tokenizer, _records(), _config(max_steps=3))
    assert set(trainable_state(tiny_llama)) == {"lm_head.weight"}
    for name, param in tiny_llama.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name


@pytest.mark.parametrize("overrides", [{}, {r"layers\.1\.mlp": 3e-3, r"^model\.norm": 0.0}])
def test_resume_reproduces_the_uninterrupted_run(char_tokenizer, tiny_llama, tmp_path, overrides):
    records = _records(12)
    full = copy.deepcopy(tiny_llama)
    groups = dict(lr_overrides=overrides)
    train(full, char_tokenizer, records, _config(schedule="cosine", warmup_ratio=0.2, **groups))

    class Crash(RuntimeError):
        pass

    def crash_at_4(step: int, metrics: dict) -> None:
        if step == 4:
            raise Crash

    ckpt = dict(checkpoint_dir=tmp_path, checkpoint_every=3, log_every=1, schedule="cosine")
    cfg = _config(warmup_ratio=0.2, **ckpt, **groups)
    interrupted = copy.deepcopy(tiny_llama)
    with pytest.raises(Crash):
        train(interrupted, char_tokenizer, records, cfg, on_log=crash_at_4)
    resumed = copy.deepcopy(tiny_llama)
    result = train(resumed, char_tokenizer, records, cfg.model_copy(update={"resume": True}))
    assert result.resumed_from == 3 and result.steps == 6
    for (name, a), b in zip(full.named_parameters(), resumed.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    if overrides:  # the optimizer state is per group: other groups cannot resume from it
        other = cfg.model_copy(update={"resume": True, "lr_overrides": {"norm": 0.0}})
        with pytest.raises(InputError, match="other LR groups"):
            train(copy.deepcopy(tiny_llama), char_tokenizer, records, other)


def test_aux_loss_and_on_log_hooks(char_tokenizer, tiny_llama):
    logged = []

    def aux(model):
        return 0.0 * model.lm_head.weight.sum() + 0.5

    train(
        tiny_llama,
        char_tokenizer,
        _records(),
        _config(max_steps=4, log_every=2),
        aux_loss=aux,
        on_log=lambda step, m: logged.append((step, m)),
    )
    assert [s for s, _ in logged] == [2, 4]
    assert all(abs(m["aux_loss"] - 0.5) < 1e-6 for _, m in logged)


def test_bad_input(char_tokenizer, tiny_llama):
    with pytest.raises(InputError):
        train(tiny_llama, char_tokenizer, [], _config())
    for param in tiny_llama.parameters():
        param.requires_grad = False
    with pytest.raises(ValueError, match="requires_grad"):
        train(tiny_llama, char_tokenizer, _records(), _config())


def test_a_group_at_lr_0_stays_put_while_the_others_train(char_tokenizer, tiny_llama):
    before = {n: p.clone() for n, p in tiny_llama.named_parameters()}
    config = _config(max_steps=3, schedule="cosine", lr_overrides={r"layers\.0\.": 0.0})
    result = train(tiny_llama, char_tokenizer, _records(), config)
    layer0 = [n for n in before if ".layers.0." in n]
    assert layer0 and len(layer0) < len(before)
    for name, param in tiny_llama.named_parameters():
        moved = not torch.equal(param, before[name])
        assert moved != (name in layer0), name
    groups = {g["name"]: g for g in result.param_groups}
    assert list(groups) == [r"layers\.0\.", "default"]
    assert groups[r"layers\.0\."]["lr"] == 0.0 and groups["default"]["lr"] == 1e-2
    assert groups[r"layers\.0\."]["tensors"] == len(layer0)
    total = sum(p.numel() for p in tiny_llama.parameters())
    assert sum(g["parameters"] for g in groups.values()) == total
    assert result.to_dict()["param_groups"] == result.param_groups


def test_lr_patterns_must_each_match_and_not_overlap(char_tokenizer, tiny_llama):
    with pytest.raises(InputError, match="'no_such_param' matches no trainable parameter"):
        train(tiny_llama, char_tokenizer, _records(), _config(lr_overrides={"no_such_param": 1.0}))
    for param in tiny_llama.lm_head.parameters():
        param.requires_grad = False  # a pattern that matches only frozen parameters is no better
    with pytest.raises(InputError, match="'lm_head' matches no trainable"):
        train(tiny_llama, char_tokenizer, _records(), _config(lr_overrides={"lm_head": 1.0}))
    with pytest.raises(InputError, match="matches two patterns") as info:
        train(tiny_llama, char_tokenizer, _records(), _config(lr_overrides={"proj": 1, "q_": 2}))
    assert info.value.field == "lr_overrides"
    with pytest.raises(ValidationError, match="bad regular expression"):
        _config(lr_overrides={"(": 1e-3})
    with pytest.raises(ValidationError):
        _config(lr_overrides={"proj": -1.0})


def test_bf16_autocast_trains_and_leaves_a_plain_fp32_model(char_tokenizer, tiny_llama):
    result = train(
        tiny_llama, char_tokenizer, _records(), _config(max_steps=30, mixed_precision="bf16")
    )
    assert sum(result.losses[-5:]) / 5 < 0.5 * sum(result.losses[:5]) / 5
    assert all(p.dtype == torch.float32 for p in tiny_llama.parameters())
    ids = char_tokenizer("say 1", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = tiny_llama(input_ids=ids).logits
    assert logits.dtype == torch.float32  # autocast stays inside the training loop


def test_precision_can_change_between_runs(char_tokenizer, tiny_llama):
    for precision in ("bf16", "no", "bf16"):
        result = train(tiny_llama, char_tokenizer, _records(), _config(mixed_precision=precision))
        assert result.steps == 6 and all(math.isfinite(x) for x in result.losses)
