"""Scores kept on disk while a bank is scored, so a killed select-experts resumes.

Scoring is the cost of Stage 1 (one generation pass and one NLL pass per adapter). Each
model's `AdapterScore` (the base row and every adapter) is written, atomically, to a file of
its own as soon as it is scored; a rerun reads back the files it can trust and scores only
the rest. A file is trusted only under its key: a hash of what the numbers depend on (the
K-shot task as prompts and targets, the scoring config, the base model's weights and
tokenizer, the device and dtype, and the adapter's own factors), so a rerun with another
K-shot, base or setting never picks up a stale score; such files are ignored and left for the
caller to delete with the directory once experts.json is written.

JSON keeps every float exactly (shortest repr round-trips) and writes inf/nan as Infinity/NaN,
so a resumed selection is the one an uninterrupted run makes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch

from taskexpert.bank import LoraAdapter
from taskexpert.experts.scoring import BASE_ROW, AdapterScore, KShotTask, ScoringConfig
from taskexpert.io import write_json
from taskexpert.tensor_sample import spaced_indices

STORE_VERSION = 1
SAMPLES_PER_TENSOR = 64


def _tensor_digest(digest, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().cpu().contiguous()
    digest.update(f"{tuple(tensor.shape)}:{tensor.dtype}".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def base_fingerprint(model, tokenizer) -> str:
    """The base model as scoring sees it: config, every parameter (shape, dtype, sum and a few
    evenly spaced values: a full pass on the parameter's own device, no copy of the model),
    the tokenizer's vocabulary, device and dtype."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        values = {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}
        digest.update(json.dumps(values, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, param in model.named_parameters():
            flat = param.detach().reshape(-1)
            index = spaced_indices(flat.numel(), SAMPLES_PER_TENSOR, device=flat.device)
            sample = flat[index].cpu().double().tolist()
            total = float(flat.float().sum())  # float32 on the device: MPS has no float64
            digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}:{param.device.type}".encode())
            digest.update(json.dumps([total, sample]).encode())
    vocab = sorted(tokenizer.get_vocab().items())
    digest.update(f"{type(tokenizer).__name__}:{len(tokenizer)}".encode())
    digest.update(json.dumps(vocab).encode())
    return digest.hexdigest()


def adapter_fingerprint(adapter: LoraAdapter) -> str:
    """The adapter's factors, ranks and scalings (not its path: a moved bank still resumes)."""
    digest = hashlib.sha256()
    for module in sorted(adapter.modules):
        factors = adapter.modules[module]
        digest.update(f"{module}:{factors.alpha!r}:{factors.scaling!r}".encode())
        _tensor_digest(digest, factors.A)
        _tensor_digest(digest, factors.B)
    return digest.hexdigest()


def task_fingerprint(task: KShotTask, config: ScoringConfig) -> str:
    """The K-shot as scored (prompts, targets, answer kinds, generation length) and the config."""
    document = {
        "version": STORE_VERSION,
        "task": dataclasses.asdict(task),
        "config": dataclasses.asdict(config),
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


def score_to_json(score: AdapterScore) -> dict:
    return dataclasses.asdict(score)


def score_from_json(data: dict) -> AdapterScore:
    names = {f.name for f in dataclasses.fields(AdapterScore)}
    return AdapterScore(**{k: v for k, v in data.items() if k in names})


class ScoreStore:
    """One JSON file per scored model in `directory`, named by its key (see the module doc)."""

    def __init__(
        self, directory: str | Path, base_model, tokenizer, task: KShotTask, config: ScoringConfig
    ) -> None:
        self.dir = Path(directory)
        self.context = hashlib.sha256(
            (task_fingerprint(task, config) + base_fingerprint(base_model, tokenizer)).encode()
        ).hexdigest()

    def key(self, name: str, adapter: LoraAdapter | None) -> str:
        own = "base" if adapter is None else adapter_fingerprint(adapter)
        return hashlib.sha256(f"{self.context}:{name}:{own}".encode()).hexdigest()[:32]

    def _path(self, name: str, adapter: LoraAdapter | None) -> Path:
        return self.dir / f"{self.key(name, adapter)}.json"

    def get(self, name: str, adapter: LoraAdapter | None) -> AdapterScore | None:
        """The stored score, or None (never scored, or scored under other inputs)."""
        path = self._path(name, adapter)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("name") != name or data.get("key") != path.stem:
                return None
            return score_from_json(data["score"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent (or not ours): score it again

    def put(self, name: str, adapter: LoraAdapter | None, score: AdapterScore) -> None:
        path = self._path(name, adapter)
        write_json(path, {"name": name, "key": path.stem, "score": score_to_json(score)})

    def done(self, adapters: Mapping[str, LoraAdapter]) -> dict[str, AdapterScore]:
        """Every stored score for the base row and `adapters`, by name."""
        found = {}
        for name, adapter in [(BASE_ROW, None), *adapters.items()]:
            score = self.get(name, adapter)
            if score is not None:
                found[name] = score
        return found
