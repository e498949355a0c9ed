"""OnnxEncoder: the same vectors as the torch encoder (fp32), close ones (int8), own cache keys."""

from __future__ import annotations

import numpy as np
import pytest

from taskexpert import onnx_embed
from taskexpert.embed import SentenceEncoder, auto_encoder, resolve_embedder
from taskexpert.errors import InputError
from taskexpert.onnx_embed import OnnxEncoder

TEXTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May.",
    "Write a Python function that returns the factorial of n.",
    "short",
    "Which skin surface will produce the most heat when rubbed? A. dry palms B. wet palms "
    * 6,  # longer than most: padding inside a length-sorted batch
]


@pytest.fixture(scope="module")
def onnx_encoders(tmp_path_factory):
    """fp32 and int8 exports of the default encoder into a throwaway models dir (once)."""
    models = tmp_path_factory.mktemp("onnx-models")
    return {p: OnnxEncoder(precision=p, threads=1, models_dir=models) for p in ("fp32", "int8")}


def test_fp32_matches_the_torch_encoder(onnx_encoders, minilm):
    # Same graph, same tokenizer, same pooling: float rounding only (measured 2e-7 max).
    expected = minilm.embed(TEXTS, batch_size=2, progress=False)
    got = onnx_encoders["fp32"].embed(TEXTS, batch_size=2, progress=False)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_int8_stays_close_to_the_torch_encoder(onnx_encoders, minilm):
    # Per-channel int8 weights: cosine 0.992 mean, 0.981 min on 200 real pool texts; a one-word
    # text moves most (0.966 measured). Allowed: mean >= 0.98, each >= 0.95.
    expected = minilm.embed(TEXTS, progress=False)
    got = onnx_encoders["int8"].embed(TEXTS, progress=False)
    cosine = (got * expected).sum(axis=1)
    assert cosine.mean() >= 0.98 and cosine.min() >= 0.95, cosine
    assert onnx_encoders["int8"].model_file.name == "model_int8.onnx"


def test_export_is_reused(onnx_encoders):
    encoder = onnx_encoders["fp32"]
    encoder.embed(["x"], progress=False)
    mtime = encoder.model_file.stat().st_mtime_ns
    again = OnnxEncoder(precision="fp32", models_dir=encoder.export_dir.parent)
    again.embed(["x"], progress=False)
    assert again.model_file.stat().st_mtime_ns == mtime


def test_cache_keys_differ_by_backend_precision_and_length(tmp_path):
    names = {
        SentenceEncoder().name,
        OnnxEncoder(precision="fp32", models_dir=tmp_path).name,
        OnnxEncoder(precision="int8", models_dir=tmp_path).name,
        OnnxEncoder(precision="int8", max_seq_length=128, models_dir=tmp_path).name,
    }
    assert len(names) == 4


def test_resolve_embedder_onnx_names(tmp_path):
    assert resolve_embedder("onnx", threads=1).precision == "fp32"
    assert resolve_embedder("onnx-int8").precision == "int8"
    with pytest.raises(InputError, match="precision"):
        OnnxEncoder(precision="int4", models_dir=tmp_path)


def test_missing_runtime_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_embed, "onnx_available", lambda: "No module named 'onnxruntime'")
    encoder = OnnxEncoder(models_dir=tmp_path)
    with pytest.raises(InputError, match="pip install onnxruntime onnx"):
        encoder.embed(["x"], progress=False)
    assert not any(tmp_path.iterdir())  # nothing exported


def test_resolve_falls_back_to_torch_without_onnxruntime(monkeypatch):
    monkeypatch.setattr(onnx_embed, "onnx_available", lambda: "No module named 'onnxruntime'")
    with pytest.warns(UserWarning, match="using the torch encoder"):
        encoder = resolve_embedder("onnx-int8")
    assert isinstance(encoder, SentenceEncoder)


def test_auto_is_int8_onnx_on_a_cpu_and_torch_elsewhere(monkeypatch):
    """`auto`, select-data's default: the measured fastest encoder that keeps quality on a CPU
    (int8 ONNX), the torch encoder on an accelerator and where onnxruntime is missing."""
    assert auto_encoder("cpu") == "onnx-int8"
    assert auto_encoder("cuda") == auto_encoder("mps") == "default"
    encoder = resolve_embedder("auto", device="cpu")
    assert isinstance(encoder, OnnxEncoder) and encoder.precision == "int8"
    from taskexpert.scaleout.embed import actor_encoder  # on Ray the actors' hardware decides

    assert actor_encoder("auto", 0) == "onnx-int8" and actor_encoder("auto", 0.5) == "default"
    assert actor_encoder("static", 1) == "static"
    monkeypatch.setattr(onnx_embed, "onnx_available", lambda: "No module named 'onnxruntime'")
    assert auto_encoder("cpu") == "default"
    assert isinstance(resolve_embedder("auto", device="cpu"), SentenceEncoder)  # no warning
