"""The testbed tokenizer: whole words for the fixed vocabulary, single characters for the rest.

Why not characters only: a prompt template ("### Instruction: ...") plus a rationale is about
2-3x longer in characters than in these tokens, and a tiny model on two CPU cores pays for
every token. Why not trained BPE: merges would glue the letters of random operand strings
("kqzt") into pieces, and reversing or shifting letters hidden inside a piece is much harder.

So words that recur in the corpus (template words, the small lexicon, names) are one token
each, with or without a leading space, and everything else splits into single characters:
operand strings letter by letter, numbers digit by digit (what column arithmetic needs), and a
space before a letter or digit is a token of its own, so a letter is the same token wherever
it stands and copying an operand into a rationale is copying tokens. The split is a regex
pre-tokenizer and a `Fuse` decoder, all stock `tokenizers` parts: `save_pretrained` writes a
plain tokenizer.json that `AutoTokenizer` loads, and decode(encode(text)) == text for any
printable ASCII text.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
LITERALS = ["###", "\n\n"]
# A word must recur this often in the corpus sample to get its own token: template words do,
# random operand strings never do.
MIN_WORD_COUNT = 20
_WORD = re.compile(r"[A-Za-z]{2,}")


def corpus_words(texts: Iterable[str], min_count: int = MIN_WORD_COUNT) -> list[str]:
    """Words (2+ letters) frequent enough to deserve a token, sorted for determinism."""
    counts = Counter(w for text in texts for w in _WORD.findall(text))
    return sorted(w for w, c in counts.items() if c >= min_count)


def _characters() -> list[str]:
    return [c for c in string.printable if c not in "\t\r\x0b\x0c"]


def build_tokenizer(words: Iterable[str]):
    """A PreTrainedTokenizerFast over words + single characters (see the module doc)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(words), key=lambda w: (-len(w), w))
    pieces = list(SPECIALS) + LITERALS
    # characters alone: a letter or digit is the same token after a space or not, so copying
    # an operand into a rationale is copying tokens
    for piece in _characters() + words + [" " + w for w in words]:
        if piece not in pieces:
            pieces.append(piece)
    vocab = {piece: i for i, piece in enumerate(pieces)}
    literal = "|".join(re.escape(x) for x in LITERALS)
    pattern = literal + (r"| ?\b(?:" + "|".join(words) + r")\b" if words else "") + r"|[\s\S]"
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )
