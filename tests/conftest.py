"""Shared fixtures: a tiny random Llama with a character tokenizer, built offline in a second.

Unit tests use it wherever a real Hugging Face causal LM is needed; nothing in the package may
depend on its tokenizer or sizes (the testbed and SmolLM2 exercise other ones).
"""

from __future__ import annotations

import os

import pytest
from tiny_models import make_char_tokenizer, make_tiny_llama
from transformers import PreTrainedTokenizerFast


@pytest.fixture(autouse=True)
def restore_environment():
    """A verb run in-process with `--quiet` sets TASKEXPERT_QUIET (meant for its workers) and
    configures the package's logger; each test starts from the session's environment and
    logger."""
    import logging

    before = dict(os.environ)
    logger = logging.getLogger("taskexpert")  # the CLI's configure_logging changes it too
    handlers, propagate, level = list(logger.handlers), logger.propagate, logger.level
    yield
    os.environ.clear()
    os.environ.update(before)
    logger.handlers[:], logger.propagate = handlers, propagate
    logger.setLevel(level)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: two torch threads spin against each other and
    run up to 100x slower than one. Modules ask for it with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def char_tokenizer() -> PreTrainedTokenizerFast:
    return make_char_tokenizer()


@pytest.fixture()
def tiny_llama(char_tokenizer):
    return make_tiny_llama(len(char_tokenizer))


@pytest.fixture(scope="session")
def minilm():
    """The real default sentence encoder (all-MiniLM-L6-v2, offline), loaded once per session."""
    from taskexpert.embed import SentenceEncoder

    encoder = SentenceEncoder(device="cpu")
    encoder.model  # noqa: B018 - load now, so tests time their own work
    return encoder


@pytest.fixture(scope="session")
def micro_testbed(tmp_path_factory):
    """The micro testbed (`taskexpert.testbed.Testbed`), built once per session on one thread:
    the thread count changes float summation order, so pinning it makes the build's weights
    the same in every session on a machine (tests/test_golden_micro.py relies on that)."""
    from taskexpert.testbed import build_testbed

    root = tmp_path_factory.getbasetemp() / "micro_testbed"
    return build_testbed(root, "micro", 0, progress=False, threads=1)
