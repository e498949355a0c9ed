"""Shared fixtures: a tiny random Llama with a character tokenizer, built offline in a second.

Unit tests use it wherever a real Hugging Face causal LM is needed; nothing in the package may
depend on its tokenizer or sizes (the testbed and SmolLM2 exercise other ones).
"""

from __future__ import annotations

import os

import pytest
from tiny_models import make_char_tokenizer, make_tiny_llama
from transformers import PreTrainedTokenizerFast


def pytest_configure(config):
    """Under xdist, each worker's torch and BLAS, and the processes its tests start, get the
    cores divided by the workers: two workers of two threads each on 2 cores spun against each
    other (the suite took 8 min 44 s on a 2-core VM, against 6 min 50 s with one thread each)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        from threadpoolctl import threadpool_limits

        from taskexpert.runtime import cpu_count, pin_process_threads

        share = str(max(1, cpu_count() // workers))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(name, share)  # for the processes tests start
        threads = int(os.environ["OMP_NUM_THREADS"])
        pin_process_threads(threads)
        threadpool_limits(limits=threads)  # this process's BLAS, loaded before the variables


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
