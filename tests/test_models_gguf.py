"""GGUF bases: a missing `gguf` package and a file transformers cannot read are one clear
InputError each (what to install, which file), never an ImportError or a reader traceback."""

from __future__ import annotations

import importlib.util

import pytest

from taskexpert.errors import InputError
from taskexpert.models import load_base


def test_missing_gguf_package_says_what_to_install(tmp_path, monkeypatch):
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"GGUF")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a)
    )
    with pytest.raises(InputError, match="needs the PyPI package gguf: pip install gguf") as err:
        load_base(str(weights), progress=False)
    assert str(weights) in str(err.value)


@pytest.mark.parametrize("content", [b"", b"GGUF\x03\x00\x00\x00garbage", b"not a gguf file"])
def test_unreadable_gguf_file_names_the_file(tmp_path, content):
    pytest.importorskip("gguf")
    weights = tmp_path / "broken.gguf"
    weights.write_bytes(content)
    with pytest.raises(InputError, match="transformers cannot read this GGUF file") as err:
        load_base(str(weights), progress=False)
    assert str(weights) in str(err.value)


def test_absent_gguf_file(tmp_path):
    with pytest.raises(InputError, match="GGUF file not found"):
        load_base(str(tmp_path / "absent.gguf"), progress=False)
