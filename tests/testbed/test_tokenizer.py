import random

from transformers import AutoTokenizer

from taskexpert.prompts import format_prompt
from taskexpert.testbed.families import FAMILIES, make_record
from taskexpert.testbed.tokenizer import build_tokenizer, corpus_words


def _records():
    rng = random.Random(0)
    return [
        make_record(f, f.draw(rng, "full"), rng.choice(f.templates), "x")
        for f in FAMILIES.values()
        for _ in range(30)
    ]


def test_words_whole_operands_and_digits_split(tmp_path):
    records = _records()
    tokenizer = build_tokenizer(corpus_words([r.text for r in records], min_count=5))
    tokenizer.save_pretrained(str(tmp_path))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    for record in records:
        text = format_prompt(record, loaded) + record.output
        ids = loaded(text)["input_ids"]
        assert ids[0] == loaded.bos_token_id
        assert loaded.unk_token_id not in ids
        assert loaded.decode(ids, skip_special_tokens=True) == text
    tokens = loaded.tokenize("Reverse the letters of kqzt. 47 plus 385")
    assert tokens[:4] == ["Reverse", " the", " letters", " of"]
    assert tokens[4:9] == [" ", "k", "q", "z", "t"]  # a letter is one token, space or not
    assert tokens[-4:] == [" ", "3", "8", "5"]
    n_tokens = sum(len(loaded.tokenize(r.text)) for r in records)
    assert n_tokens < 0.6 * sum(len(r.text) for r in records)  # words keep sequences short


def test_unknown_text_falls_back_to_characters():
    tokenizer = build_tokenizer(["hello"])
    text = "hello zebra-crossing ~42"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.tokenize("hello")[0] == "hello"
