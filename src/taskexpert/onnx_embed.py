"""A sentence-transformers encoder run by ONNX Runtime (issue 20: cold selection in minutes).

Why: on a shared 2-core CPU the torch path of MiniLM embeds tens of texts per second, so a
52k-text pool takes most of an hour. ONNX Runtime runs the same graph with fused kernels and a
fixed intra-op thread count (a busy CPU punishes oversubscription), optionally with int8
weights. The model is exported once from the local directory (never downloaded) with torch's
exporter and kept under `<cache root>/models/`; tokenisation is the model's own fast tokenizer,
pooling and normalisation follow its sentence-transformers modules, so fp32 vectors equal the
torch encoder's (cosine >= 0.9999, tests/test_onnx_embed.py).

sentence-transformers' own `backend="onnx"` needs `optimum-onnx`, which pins transformers < 4.58
(a downgrade here); this module needs only `onnxruntime` and, to export and quantise, `onnx`
(both dependencies of taskexpert).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from taskexpert.embed import (
    DEFAULT_MAX_SEQ_LENGTH,
    DEFAULT_MODEL_ID,
    _dir_fingerprint,
    _offline,
    cache_root,
    default_encoder_path,
    embed_in_batches,
    l2_normalize,
)
from taskexpert.errors import InputError
from taskexpert.io import atomic_dir

PRECISIONS = ("fp32", "int8")
OPSET = 17
MISSING = "the onnx encoder needs onnxruntime and onnx (pip install onnxruntime onnx): {}"


def onnx_available() -> str | None:
    """None when onnxruntime and onnx import, else why not (for messages and test skips)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None


def _pooling(path: Path) -> str:
    """'mean' or 'cls' from the model's 1_Pooling module (sentence-transformers layout)."""
    config_path = next(iter(sorted(path.glob("*_Pooling/config.json"))), None)
    if config_path is None:
        return "mean"
    config = json.loads(config_path.read_text())
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    raise InputError("only mean or CLS pooling can run through ONNX", config_path)


def _export(model_dir: Path, out_dir: Path, precision: str) -> None:
    """Export the transformer (last hidden state) to ONNX, then quantise its weights for int8."""
    _offline()
    import torch
    from transformers import AutoModel

    class _Hidden(torch.nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    model = AutoModel.from_pretrained(
        str(model_dir), local_files_only=True, attn_implementation="eager"
    )
    wrapped = _Hidden(model.eval())
    names = ["input_ids", "attention_mask", "token_type_ids"]
    dummy = tuple(torch.ones(2, 8, dtype=torch.long) for _ in names)
    axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "last_hidden_state"]}
    with atomic_dir(out_dir) as tmp, torch.no_grad():
        fp32 = Path(tmp) / "model.onnx"
        torch.onnx.export(
            wrapped,
            dummy,
            str(fp32),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
        if precision == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # Per-channel weights: per-tensor int8 cost MiniLM 0.05 of cosine on real texts.
            quantize_dynamic(
                str(fp32),
                str(Path(tmp) / "model_int8.onnx"),
                weight_type=QuantType.QInt8,
                per_channel=True,
            )
            fp32.unlink()


class OnnxEncoder:
    """A sentence-transformers model directory (default all-MiniLM-L6-v2) via ONNX Runtime.

    `precision` fp32 reproduces the torch encoder; int8 quantises the weights (dynamic
    quantisation, per channel). `threads` fixes ONNX Runtime's intra-op threads (None: its own
    choice, all cores). Exported on first use, loaded lazily, like the other encoders.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        precision: str = "fp32",
        max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
        threads: int | None = None,
        models_dir: str | Path | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.path = Path(path) if path is not None else default_encoder_path()
        if not (self.path / "config.json").is_file():
            raise InputError("not a transformers model directory (no config.json)", self.path)
        model_id = DEFAULT_MODEL_ID if path is None else self.path.name
        fingerprint = _dir_fingerprint(self.path)
        self.precision, self.max_seq_length, self.threads = precision, max_seq_length, threads
        self.pooling = _pooling(self.path)
        # Precision and truncation change the vectors, so they are part of the cache key.
        self.name = f"onnx-{model_id}-{fingerprint}-{precision}-len{max_seq_length}"
        models_dir = Path(models_dir) if models_dir is not None else cache_root() / "models"
        self.export_dir = models_dir / f"onnx{OPSET}-{model_id}-{fingerprint}-{precision}"
        self._session = None
        self._tokenizer = None

    @property
    def model_file(self) -> Path:
        return self.export_dir / ("model_int8.onnx" if self.precision == "int8" else "model.onnx")

    @property
    def session(self):
        """The ONNX Runtime session (the model is exported first if it is not on disk yet)."""
        if self._session is None:
            missing = onnx_available()
            if missing is not None:
                raise InputError(MISSING.format(missing))
            import onnxruntime as ort

            if not self.model_file.is_file():
                _export(self.path, self.export_dir, self.precision)
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads or 0
            options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(
                str(self.model_file), options, providers=["CPUExecutionProvider"]
            )
            self._inputs = {i.name for i in self._session.get_inputs()}
        return self._session

    @property
    def tokenizer(self):
        """The model's fast tokenizer (tokenizers), truncating at `max_seq_length`, padding."""
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            file = self.path / "tokenizer.json"
            if not file.is_file():
                raise InputError("the onnx encoder needs the model's tokenizer.json", self.path)
            tokenizer = Tokenizer.from_file(str(file))
            tokenizer.enable_truncation(self.max_seq_length)
            tokenizer.enable_padding()
            self._tokenizer = tokenizer
        return self._tokenizer

    @property
    def dim(self) -> int:
        return int(json.loads((self.path / "config.json").read_text())["hidden_size"])

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        encoded = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run(None, feeds)[0]
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask[..., None].astype(np.float32)
        return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)

    def embed(
        self, texts: Sequence[str], batch_size: int = 64, progress: bool = True
    ) -> np.ndarray:
        """Embed in length-sorted batches; rows come back in input order, L2-normalised."""
        self.session  # noqa: B018 - export and load before the bar starts
        out = embed_in_batches(texts, batch_size, self.dim, self.name, self._embed_batch, progress)
        return l2_normalize(out)
