"""DiverseEvol (docs/design.md Stage 4): the model grows its own training subset, round by round.

Round 0 trains on `init` random pool items. Round r >= 1 first selects `per_round` new items
with round r-1's model (K-center greedy on its hidden-state embeddings of the whole pool, or a
baseline), then trains on the grown subset, from the base model by default (`--continue`
trains round r-1's model further). This is the reference code's order: a round's subset is
chosen by the previous round's model, so round r's model is the one trained on round r's
subset. Every round's subset and model are kept.

Run directory:

    run.json                 the arguments (rerunning with other ones is an error)
    base_embeddings.npy      the base model's pool embeddings (+ .json marker): Vendi, one-shot
    rounds/NN/               one finished round, built under a temp name and renamed:
        subset.jsonl         the subset trained in this round (selection order)
        selection.json       its pool rows, the rows added this round and how they were chosen
        model/               LoRA adapter or full weights (safetensors)
        summary.json         size, seconds, vendi, exact_match (with --eval), training stats
        eval.json            per-item predictions (with --eval)
        COMPLETE.json        size and sha256 of every file above, written last
    curve.json               all round summaries so far
    scratch/                 this round's pool embeddings and training checkpoints

Resume: rerunning the same command continues after the last finished round. A round counts
only with a COMPLETE.json whose checksums match; leftovers of an interrupted round (temp
directories, a round directory without a marker) are discarded and the round is rerun; a
round whose files no longer match their marker is an error, never silently trusted.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from taskexpert.errors import InputError
from taskexpert.io import atomic_dir, check_output, is_temp_name, remove_tree, write_json
from taskexpert.records import Record, load_records, write_records
from taskexpert.train import TrainConfig

log = logging.getLogger(__name__)

STRATEGIES = ("kcenter", "random", "least-confidence", "margin", "entropy", "kcenter-oneshot")
UNCERTAINTY = ("least-confidence", "margin", "entropy")
MARKER = "COMPLETE.json"
RUN_FILE = "run.json"
BASE_EMBEDDINGS = "base_embeddings.npy"
FORMAT_VERSION = 1
# Runtime knobs that never change which items are chosen: they may differ between reruns.
RUNTIME_FIELDS = frozenset(
    {"embed_batch_size", "eval_batch_size", "checkpoint_every", "device", "progress", "threads"}
)
TRAIN_RUNTIME_FIELDS = frozenset({"checkpoint_dir", "checkpoint_every", "resume", "progress"})


def default_train_config() -> TrainConfig:
    """Three epochs as in the paper; the learning rate suits a LoRA (use ~2e-5 for --full)."""
    return TrainConfig(epochs=3.0, lr=2e-4, batch_size=16, max_length=512)


class DiverseEvolConfig(BaseModel):
    """Every option of a run. The schedule defaults are the paper's (100 random, +100 x 10
    rounds, restart from the base, last layer, Euclidean); training defaults to a LoRA (the
    paper fine-tunes every weight: `lora=False`), which is what fits on one CPU or GPU."""

    model_config = ConfigDict(extra="forbid")

    base: str = Field(description="base model directory, or 'smollm2'")
    pool: Path
    init: int = Field(100, gt=0, description="random items trained in round 0")
    per_round: int = Field(100, gt=0, description="items added per round")
    rounds: int = Field(10, gt=0, description="rounds after round 0")
    strategy: str = "kcenter"
    embed_layer: str = Field("last", description="'last' or a hidden-state index")
    outlier_share: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="share of the pool K-center never picks: the rows farthest from a random "
        "sample of the pool (outliers.far_outliers); 0 is the paper's K-center",
    )
    restart_from_base: bool = Field(True, description="False: keep training the last model")
    lora: bool = Field(True, description="False: full fine-tune")
    lora_r: int = Field(8, gt=0)
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_targets: str = Field("all-linear", description="comma-separated module names")
    train: TrainConfig = Field(default_factory=default_train_config)
    eval: Path | None = None
    eval_max_new_tokens: int = Field(64, gt=0)
    seed: int = 0
    dtype: str = "float32"
    # runtime only
    embed_batch_size: int = Field(32, gt=0)
    eval_batch_size: int = Field(32, gt=0)
    checkpoint_every: int = Field(0, ge=0, description="optimizer steps between checkpoints")
    device: str = "auto"
    threads: int | None = Field(None, gt=0, description="torch CPU threads; None: torch's")
    progress: bool = True

    @field_validator("embed_layer", mode="before")
    @classmethod
    def _layer_as_text(cls, value: object) -> object:
        return str(value).strip().lower() if isinstance(value, (int, str)) else value


@dataclass
class DiverseEvolResult:
    """The run directory and every round's summary, in round order."""

    run_dir: Path
    rounds: list[dict] = field(default_factory=list)
    resumed_from: int = 0


# ---- run directory ---------------------------------------------------------------------------


def round_name(index: int) -> str:
    return f"{index:02d}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_marker(directory: Path, round_index: int) -> None:
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        files[rel] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    write_json(directory / MARKER, {"round": round_index, "files": files})


def _check_marker(directory: Path, round_index: int) -> dict:
    """The marker of a finished round, after checking every file it lists against its sha256."""
    marker_path = directory / MARKER
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
        files = marker["files"]
        assert marker["round"] == round_index and isinstance(files, dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise InputError(_corrupt("its completion marker is unreadable"), marker_path) from None
    for rel, expected in files.items():
        path = directory / rel
        if not path.is_file():
            raise InputError(_corrupt("a file listed in COMPLETE.json is missing"), path)
        if path.stat().st_size != expected["size"] or file_sha256(path) != expected["sha256"]:
            raise InputError(_corrupt("the file changed after the round finished"), path)
    return marker


def _corrupt(reason: str) -> str:
    return (
        f"corrupted round: {reason}; delete this round directory and the later ones "
        "to recompute them"
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read JSON: {exc}", path) from None


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """One process per run directory: a second one would race on the round directories."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError("another diverseevol run is using this directory", run_dir) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _option_name(key: str) -> str:
    special = {
        "restart_from_base": "--restart-from-base/--continue",
        "lora": "--lora/--full",
        "pool_sha256": "--pool",
        "eval_sha256": "--eval",
    }
    leaf = key.split(".")[-1]
    return special.get(leaf, "--" + leaf.replace("_", "-"))


def _identity(config: DiverseEvolConfig, pool_sha: str, eval_sha: str | None) -> dict:
    """What decides the subsets and models: the content of pool and eval, not their paths."""
    data = config.model_dump(mode="json", exclude=set(RUNTIME_FIELDS) | {"pool", "eval", "rounds"})
    data["train"] = {k: v for k, v in data["train"].items() if k not in TRAIN_RUNTIME_FIELDS}
    data["base"] = _resolved_base(config.base)
    data["pool_sha256"], data["eval_sha256"] = pool_sha, eval_sha
    return data


def _resolved_base(base: str) -> str:
    path = Path(base)
    return str(path.resolve()) if path.is_dir() else base


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _write_run(run_dir: Path, config: DiverseEvolConfig, identity: dict) -> None:
    """Store the arguments of a new run (once the base model has loaded and accepted them)."""
    path = run_dir / RUN_FILE
    if not path.exists():
        document = {"version": FORMAT_VERSION, "identity": identity}
        write_json(path, document | {"config": config.model_dump(mode="json")})


def _default_of(key: str) -> object:
    """The default of a flattened identity key, so a run started before a setting existed
    resumes as long as the setting keeps its default; None where there is none."""
    *parents, name = key.split(".")
    model = {(): DiverseEvolConfig, ("train",): TrainConfig}.get(tuple(parents))
    field = model.model_fields.get(name) if model else None
    if field is None or field.is_required():
        return None
    return field.get_default(call_default_factory=True)


def _check_run(run_dir: Path, identity: dict) -> None:
    """A rerun must ask for what the run directory holds (only --rounds may change)."""
    path = run_dir / RUN_FILE
    if not path.exists():
        return
    stored = _read_json(path)
    if stored.get("version") != FORMAT_VERSION or not isinstance(stored.get("identity"), dict):
        raise InputError("not a diverseevol run file of this version", path)
    old, new = _flatten(stored["identity"]), _flatten(identity)
    for key in sorted(set(old) | set(new)):
        before = old[key] if key in old else _default_of(key)  # settings added since
        if before != new.get(key):
            what = "content" if key.endswith("sha256") else "value"
            raise InputError(
                f"this run directory was started with a different {_option_name(key)} "
                f"({what} {old.get(key)!r}, now {new.get(key)!r}); rerun with the same "
                "arguments to resume, or choose another --out",
                path,
                field=_option_name(key),
            )


def _clear_leftovers(directory: Path) -> None:
    """Temp files and directories a killed run left in `directory` (we hold the run's lock)."""
    for entry in directory.iterdir():
        if is_temp_name(entry.name):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _finished_rounds(run_dir: Path, pool: Sequence[Record], config: DiverseEvolConfig) -> list:
    """(summary, rows) of every trustworthy finished round, in order; see the module doc."""
    rounds_dir = run_dir / "rounds"
    if not rounds_dir.is_dir():
        return []
    _clear_leftovers(rounds_dir)  # a round killed while being built
    present = {}
    for entry in rounds_dir.iterdir():
        if entry.is_dir() and re.fullmatch(r"\d+", entry.name):
            present[int(entry.name)] = entry
    finished: list[tuple[dict, list[int]]] = []
    for index in sorted(present):
        directory = present[index]
        if index != len(finished):
            raise InputError(
                f"round {index} exists but round {len(finished)} does not; delete the later "
                "rounds to recompute them",
                directory,
            )
        if not (directory / MARKER).exists():
            log.warning("discarding %s: no completion marker (interrupted round)", directory)
            for later in sorted(i for i in present if i >= index):
                remove_tree(present[later])
            break
        _check_marker(directory, index)
        summary = _read_json(directory / "summary.json")
        rows = _read_json(directory / "selection.json").get("rows")
        previous = finished[-1][1] if finished else []
        expected = config.init + index * config.per_round
        if (
            not isinstance(rows, list)
            or len(rows) != expected
            or rows[: len(previous)] != previous
            or len(set(rows)) != len(rows)
            or not all(isinstance(i, int) and 0 <= i < len(pool) for i in rows)
        ):
            raise InputError(
                _corrupt(f"its rows do not extend round {index - 1}'s to {expected} pool rows"),
                directory / "selection.json",
            )
        ids = [r.id for r in load_records(directory / "subset.jsonl")]
        if ids != [pool[i].id for i in rows]:
            raise InputError(
                _corrupt("subset.jsonl does not match the pool rows"), directory / "subset.jsonl"
            )
        finished.append((summary, rows))
    if len(finished) > config.rounds + 1:
        raise InputError(
            f"the run directory already holds {len(finished) - 1} rounds, more than --rounds "
            f"{config.rounds}",
            rounds_dir,
            field="--rounds",
        )
    return finished


# ---- models ----------------------------------------------------------------------------------


def _lora_config(config: DiverseEvolConfig):
    from peft import LoraConfig

    targets = config.lora_targets.strip()
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets if targets == "all-linear" else targets.split(","),
        task_type="CAUSAL_LM",
    )


def _trainable(model, config: DiverseEvolConfig, round_index: int):
    """A model to train from the base: a fresh LoRA on a copy of it, or a full copy."""
    import torch

    torch.manual_seed(_round_seed(config, round_index))  # the LoRA init draws random numbers
    model = copy.deepcopy(model)
    if not config.lora:
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    from peft import get_peft_model

    return get_peft_model(model, _lora_config(config))


def _load_round_model(base, round_dir: Path, config: DiverseEvolConfig, trainable: bool):
    """The model a finished round saved (its adapter on a copy of the base, or full weights)."""
    import torch

    path = round_dir / "model"
    if config.lora:
        from peft import PeftModel

        model = PeftModel.from_pretrained(copy.deepcopy(base), path, is_trainable=trainable)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, config.dtype), use_safetensors=True
        ).to(next(base.parameters()).device)
        for param in model.parameters():
            param.requires_grad_(trainable)
    return model.train(trainable) if trainable else model.eval()


def _round_seed(config: DiverseEvolConfig, round_index: int) -> int:
    return config.seed * 10_007 + round_index


# ---- one round -------------------------------------------------------------------------------


def train_format_ids(tokenizer, records: Sequence[Record], max_length: int) -> Iterator[list[int]]:
    """Token ids of prompt + output + EOS, exactly the sequences the model trains on."""
    from taskexpert.lm import encode_pair
    from taskexpert.prompts import format_prompt

    for record in records:
        yield encode_pair(
            tokenizer, format_prompt(record, tokenizer), record.output, max_length
        ).input_ids


class _Run:
    """The state of one run: pool, base model, base embeddings and the rows chosen so far."""

    def __init__(
        self,
        config: DiverseEvolConfig,
        run_dir: Path,
        pool: list[Record],
        eval_records: list[Record] | None,
    ) -> None:
        self.config, self.run_dir, self.pool = config, run_dir, pool
        self.eval_records = eval_records
        self.base = self.tokenizer = None
        self.base_embeddings: np.ndarray | None = None

    # -- shared pieces
    def load_base(self) -> None:
        """The base model and tokenizer, once per run; also validates --embed-layer."""
        from taskexpert.lm import ensure_pad_token
        from taskexpert.lm_embed import resolve_layer
        from taskexpert.models import load_base

        self.base, self.tokenizer = load_base(
            self.config.base,
            dtype=self.config.dtype,
            device=self.config.device,
            progress=self.config.progress,
        )
        ensure_pad_token(self.tokenizer)
        self.layer = resolve_layer(self.base, self.config.embed_layer)

    def sequences(self, rows: Sequence[int] | None = None) -> Iterator[list[int]]:
        records = self.pool if rows is None else [self.pool[i] for i in rows]
        return train_format_ids(self.tokenizer, records, self.config.train.max_length)

    def embed_pool(self, model, path: Path, desc: str) -> np.ndarray:
        """The whole pool's embeddings under `model`, into a .npy memmap at `path`."""
        from taskexpert.lm_embed import hidden_size, open_rows_memmap, pooled_hidden_states

        tmp = path.with_name(f".{path.name}.tmp")
        out = open_rows_memmap(tmp, len(self.pool), hidden_size(self.base))
        pooled_hidden_states(
            model,
            self.sequences(),
            len(self.pool),
            layer=self.layer,
            batch_size=self.config.embed_batch_size,
            pad_id=self.tokenizer.pad_token_id,
            out=out,
            progress=self.config.progress,
            desc=desc,
        )
        out.flush()
        del out
        tmp.replace(path)
        return np.load(path, mmap_mode="r")

    def ensure_base_embeddings(self) -> np.ndarray:
        """Computed once per run (Vendi of every subset, one-shot K-center), kept on disk."""
        path = self.run_dir / BASE_EMBEDDINGS
        marker = path.with_suffix(".json")
        from taskexpert.lm_embed import hidden_size

        expected = {"rows": len(self.pool), "dim": hidden_size(self.base), "layer": self.layer}
        if marker.is_file() and path.is_file():
            try:
                stored = json.loads(marker.read_text())
                matrix = np.load(path, mmap_mode="r")
                if stored == expected and matrix.shape == (expected["rows"], expected["dim"]):
                    self.base_embeddings = matrix
                    return matrix
            except (OSError, ValueError):
                pass
            log.warning("recomputing %s: it does not match its marker", path)
        marker.unlink(missing_ok=True)
        self.base_embeddings = self.embed_pool(self.base, path, "base embeddings")
        write_json(marker, expected)
        return self.base_embeddings

    # -- selection
    def select(self, round_index: int, chosen: list[int], previous_dir: Path | None) -> dict:
        """Rows to add in round `round_index` (>= 1) and how they were found."""
        config, strategy = self.config, self.config.strategy
        k = config.per_round
        info: dict = {"strategy": strategy}
        began = time.perf_counter()
        if strategy == "random":
            unchosen = np.setdiff1d(np.arange(len(self.pool)), chosen)
            rng = np.random.default_rng([config.seed, round_index])
            info["added"] = rng.choice(unchosen, size=k, replace=False).tolist()
        elif strategy == "kcenter-oneshot":
            info["added"] = self._kcenter(self.base_embeddings, k, chosen)
            info["embeddings"] = "base model"
        else:
            model = _load_round_model(self.base, previous_dir, config, trainable=False)
            if strategy == "kcenter":
                embeddings = self.round_embeddings(model, round_index, previous_dir)
                info["seconds_embed"] = round(time.perf_counter() - began, 3)
                info["added"] = self._kcenter(embeddings, k, chosen)
                info["embeddings"] = f"round {round_index - 1} model, hidden state {self.layer}"
                del embeddings
            else:
                info.update(self._uncertain(model, k, chosen, strategy))
            del model
        info["seconds_select"] = round(time.perf_counter() - began, 3)
        return info

    def round_embeddings(self, model, round_index: int, previous_dir: Path) -> np.ndarray:
        """The pool under the previous round's model; reused if this round was interrupted
        after embedding (the dominant cost), recognised by that model's marker digest."""
        scratch = self.run_dir / "scratch"
        scratch.mkdir(exist_ok=True)
        path, marker = scratch / "pool_embeddings.npy", scratch / "pool_embeddings.json"
        expected = {
            "round": round_index,
            "model": file_sha256(previous_dir / MARKER),
            "layer": self.layer,
            "rows": len(self.pool),
        }
        if marker.is_file() and path.is_file():
            with contextlib.suppress(OSError, ValueError):
                matrix = np.load(path, mmap_mode="r")
                if json.loads(marker.read_text()) == expected and len(matrix) == len(self.pool):
                    log.info("reusing the pool embeddings of interrupted round %d", round_index)
                    return matrix
        marker.unlink(missing_ok=True)
        matrix = self.embed_pool(model, path, f"round {round_index}: embed pool")
        write_json(marker, expected)
        return matrix

    def _kcenter(self, embeddings: np.ndarray, k: int, chosen: list[int]) -> list[int]:
        from taskexpert.selection.kcenter import kcenter_greedy
        from taskexpert.selection.outliers import far_outliers

        exclude = far_outliers(embeddings, self.config.outlier_share, seed=self.config.seed)
        return kcenter_greedy(
            embeddings,
            k,
            initial=chosen,
            metric="euclidean",
            progress=self.config.progress,
            exclude=exclude,
        )

    def _uncertain(self, model, k: int, chosen: list[int], measure: str) -> dict:
        from taskexpert.selection.uncertainty import most_uncertain, uncertainty_scores

        unchosen = np.setdiff1d(np.arange(len(self.pool)), chosen)
        scores = uncertainty_scores(
            model,
            self.sequences(unchosen.tolist()),
            len(unchosen),
            measures=[measure],
            batch_size=self.config.embed_batch_size,
            pad_id=self.tokenizer.pad_token_id,
            progress=self.config.progress,
        )[measure]
        order = most_uncertain(scores, measure, k)
        return {
            "added": unchosen[order].tolist(),
            "scores": [round(float(s), 6) for s in scores[order]],
        }

    # -- training, evaluation, saving
    def train_round(self, round_index: int, rows: list[int], previous_dir: Path | None):
        from taskexpert.train import train

        config = self.config
        if round_index == 0 or config.restart_from_base:
            model = _trainable(self.base, config, round_index)
        else:
            model = _load_round_model(self.base, previous_dir, config, trainable=True)
        scratch = self.run_dir / "scratch" / f"train-{round_name(round_index)}"
        train_config = config.train.model_copy(
            update={
                "seed": _round_seed(config, round_index),
                "progress": config.progress,
                "checkpoint_dir": scratch if config.checkpoint_every else None,
                "checkpoint_every": config.checkpoint_every,
                "resume": bool(config.checkpoint_every),
            }
        )
        result = train(model, self.tokenizer, [self.pool[i] for i in rows], train_config)
        return model, result

    def evaluate(self, model) -> dict:
        from taskexpert.evaluate import evaluate_exact_match

        report = evaluate_exact_match(
            model,
            self.tokenizer,
            self.eval_records,
            batch_size=self.config.eval_batch_size,
            max_new_tokens=self.config.eval_max_new_tokens,
            progress=self.config.progress,
        )
        by_source: dict[str, list[bool]] = {}
        for record, prediction in zip(self.eval_records, report["predictions"]):
            by_source.setdefault(record.source or "", []).append(prediction["correct"])
        report["exact_match_by_source"] = {s: float(np.mean(v)) for s, v in by_source.items()}
        report["exact_match_macro"] = float(np.mean(list(report["exact_match_by_source"].values())))
        return report

    def save_model(self, model, directory: Path) -> None:
        model.save_pretrained(directory)
        if not self.config.lora:
            self.tokenizer.save_pretrained(directory)  # a full model directory loads on its own

    def run_round(self, round_index: int, chosen: list[int]) -> tuple[dict, list[int]]:
        """Select (round >= 1), train, evaluate, save: rounds/NN appears whole or not at all."""
        from taskexpert.selection.vendi import vendi_score

        config = self.config
        began = time.perf_counter()
        previous_dir = self.round_dir(round_index - 1) if round_index else None
        if round_index == 0:
            rng = np.random.default_rng(config.seed)
            info = {
                "strategy": "random init",
                "added": rng.permutation(len(self.pool))[: config.init].tolist(),
            }
        else:
            info = self.select(round_index, chosen, previous_dir)
        added = [int(i) for i in info.pop("added")]
        rows = chosen + added
        with atomic_dir(self.round_dir(round_index)) as tmp:
            write_records(tmp / "subset.jsonl", [self.pool[i] for i in rows])
            write_json(tmp / "selection.json", {"rows": rows, "added": added, **info})
            model, trained = self.train_round(round_index, rows, previous_dir)
            self.save_model(model, tmp / "model")
            summary = {
                "round": round_index,
                "size": len(rows),
                "added": len(added),
                "strategy": config.strategy,
                "vendi": round(vendi_score(np.asarray(self.base_embeddings[sorted(rows)])), 4),
                "train": trained.to_dict(),
                "seconds_select": info.get("seconds_select", 0.0),
                "seconds_embed": info.get("seconds_embed"),
            }
            if self.eval_records:
                eval_began = time.perf_counter()
                report = self.evaluate(model)
                write_json(tmp / "eval.json", report)
                summary["exact_match"] = report["exact_match"]
                summary["exact_match_macro"] = report["exact_match_macro"]
                summary["exact_match_by_source"] = report["exact_match_by_source"]
                summary["seconds_eval"] = round(time.perf_counter() - eval_began, 3)
            del model
            summary["seconds"] = round(time.perf_counter() - began, 3)
            write_json(tmp / "summary.json", summary)
            _write_marker(tmp, round_index)
        remove_tree(self.run_dir / "scratch")
        return summary, rows

    def round_dir(self, round_index: int) -> Path:
        return self.run_dir / "rounds" / round_name(round_index)


# ---- the public entry point ------------------------------------------------------------------


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise InputError(
            f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}",
            field="--strategy",
        )


def check_sizes(config: DiverseEvolConfig, pool_size: int, pool_path: Path | None = None) -> None:
    """The pool must hold round 0 plus every round's additions."""
    check_strategy(config.strategy)
    if pool_size < config.init + config.per_round:
        raise InputError(
            f"the pool has {pool_size} records, fewer than --init {config.init} plus one round "
            f"of --per-round {config.per_round}",
            pool_path,
            field="--init",
        )
    needed = config.init + config.rounds * config.per_round
    if needed > pool_size:
        raise InputError(
            f"--init {config.init} + --rounds {config.rounds} x --per-round {config.per_round} "
            f"= {needed} records, more than the pool's {pool_size}",
            pool_path,
            field="--rounds",
        )


def _load_eval(path: Path) -> list[Record]:
    """Evaluation records, each with a gold answer (checked now, not after round 0 trains)."""
    from taskexpert.evaluate import gold_answer
    from taskexpert.prompts import infer_answer_kind

    records = load_records(path)
    for number, record in enumerate(records, start=1):
        try:
            gold_answer(record, infer_answer_kind(record))
        except InputError as exc:
            raise InputError(f"record {number}: {exc.reason}", path, field="answer") from None
    return records


def _check_pool(pool: Sequence[Record], path: Path) -> None:
    for number, record in enumerate(pool, start=1):
        if not record.output.strip():
            raise InputError(
                f"record {number} (id {record.id!r}) has an empty output: nothing to train on",
                path,
                field="output",
            )


def run_diverseevol(config: DiverseEvolConfig, run_dir: str | Path) -> DiverseEvolResult:
    """Run (or resume) DiverseEvol into `run_dir`; returns every round's summary."""
    run_dir = Path(run_dir)
    check_output(run_dir, directory=True)
    check_strategy(config.strategy)
    pool = load_records(config.pool)
    check_sizes(config, len(pool), config.pool)
    _check_pool(pool, config.pool)
    eval_records = _load_eval(config.eval) if config.eval else None
    eval_sha = file_sha256(config.eval) if config.eval else None
    identity = _identity(config, file_sha256(config.pool), eval_sha)
    with _fresh_dir_removed_on_error(run_dir), _locked(run_dir), _torch_threads(config.threads):
        _check_run(run_dir, identity)
        _clear_leftovers(run_dir)
        finished = _finished_rounds(run_dir, pool, config)
        result = DiverseEvolResult(run_dir, [s for s, _ in finished], len(finished))
        if len(finished) == config.rounds + 1:
            _write_curve(run_dir, result.rounds)
            return result
        run = _Run(config, run_dir, pool, eval_records)
        run.load_base()
        _write_run(run_dir, config, identity)
        run.ensure_base_embeddings()
        chosen = finished[-1][1] if finished else []
        for round_index in range(len(finished), config.rounds + 1):
            log.info("round %d: %d rows so far", round_index, len(chosen))
            summary, chosen = run.run_round(round_index, chosen)
            result.rounds.append(summary)
            _write_curve(run_dir, result.rounds)
    return result


@contextlib.contextmanager
def _fresh_dir_removed_on_error(run_dir: Path) -> Iterator[None]:
    """A run directory this call creates goes again if the run fails before it is recorded
    (a bad --base, say): nothing in it is worth resuming yet, and nothing is left half-made."""
    fresh = not run_dir.exists()
    try:
        yield
    except BaseException:
        if fresh and not (run_dir / RUN_FILE).exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


@contextlib.contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """On a shared CPU one thread can be many times faster than two (see docs/design.md)."""
    if count is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _write_curve(run_dir: Path, summaries: list[dict]) -> None:
    keep = ("round", "size", "vendi", "exact_match", "exact_match_macro", "seconds")
    write_json(run_dir / "curve.json", [{k: s.get(k) for k in keep if k in s} for s in summaries])
