"""One DiverseEvol round (docs/design.md Stage 4): select with the previous round's model, train,
evaluate, save. The run around the rounds (run directory, resume) is `recipes.diverseevol`.

Strategies are a name -> function table (`STRATEGIES`): each gets the round's state and
returns the pool rows to add plus how they were found. The algorithms themselves are library
code: `selection.kcenter`, `selection.uncertainty`, `selection.outliers`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from taskexpert.io import remove_tree, write_json
from taskexpert.lm_embed import train_format_ids
from taskexpert.peft_glue import fresh_lora, load_lora, lora_config
from taskexpert.progress import progress as progress_bar
from taskexpert.record_file import take
from taskexpert.records import Record, write_records
from taskexpert.rundir import MARKER, RunDir, file_sha256
from taskexpert.runtime import share_from_main, world_size

if TYPE_CHECKING:
    from taskexpert.recipes.diverseevol import DiverseEvolConfig

log = logging.getLogger(__name__)

BASE_EMBEDDINGS = "base_embeddings.npy"
BASE_LOSSES = "base_losses.npy"
LOSS_CHUNK = 4096  # records tokenized and scored at a time for base_losses
LOSS_LOGIT_BUDGET = 1 << 27  # logits per base_losses batch (rows x length x vocab): 512 MiB


def _cached_rows(path: Path, expected: dict, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The array at `path` when its marker (path.json) says it was made for `expected` and
    its shape agrees; else `compute()` (which writes `path`) and a new marker."""
    marker = path.with_suffix(".json")
    if marker.is_file() and path.is_file():
        with contextlib.suppress(OSError, ValueError):
            matrix = np.load(path, mmap_mode="r")
            dim = expected.get("dim")
            shape = (expected["rows"],) if dim is None else (expected["rows"], dim)
            if json.loads(marker.read_text()) == expected and matrix.shape == shape:
                return matrix
        log.warning("recomputing %s: it does not match its marker", path)
    marker.unlink(missing_ok=True)
    matrix = compute()
    write_json(marker, expected)
    return matrix


def round_name(index: int) -> str:
    return f"{index:02d}"


def round_seed(config: DiverseEvolConfig, round_index: int) -> int:
    return config.seed * 10_007 + round_index


# ---- models ----------------------------------------------------------------------------------


def _lora_config(config: DiverseEvolConfig):
    targets = config.lora_targets.strip()
    modules = targets if targets == "all-linear" else targets.split(",")
    return lora_config(config.lora_r, config.lora_alpha, modules, dropout=config.lora_dropout)


def trainable_model(model, config: DiverseEvolConfig, round_index: int):
    """A model to train from the base: a fresh LoRA on a copy of it, or a full copy."""
    import torch

    seed = round_seed(config, round_index)
    if config.lora:
        return fresh_lora(model, _lora_config(config), seed=seed)
    torch.manual_seed(seed)  # the same generator state as a LoRA round starts training with
    model = copy.deepcopy(model)
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def load_round_model(base, round_dir: Path, config: DiverseEvolConfig, trainable: bool):
    """The model a finished round saved (its adapter on a copy of the base, or full weights)."""
    import torch

    path = round_dir / "model"
    if config.lora:
        return load_lora(base, path, trainable=trainable)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, config.dtype), use_safetensors=True
    ).to(next(base.parameters()).device)
    for param in model.parameters():
        param.requires_grad_(trainable)
    return model.train(trainable) if trainable else model.eval()


# ---- strategies ------------------------------------------------------------------------------


def _random(run: RoundRunner, round_index: int, chosen: list[int], previous: Path) -> dict:
    unchosen = run.pickable(chosen)
    rng = np.random.default_rng([run.config.seed, round_index])
    return {"added": rng.choice(unchosen, size=run.config.per_round, replace=False).tolist()}


def _kcenter_oneshot(run: RoundRunner, round_index: int, chosen: list[int], previous: Path):
    added = run.kcenter(run.base_embeddings, run.config.per_round, chosen)
    return {"added": added, "embeddings": "base model"}


def _kcenter(run: RoundRunner, round_index: int, chosen: list[int], previous: Path) -> dict:
    began = time.perf_counter()
    model = load_round_model(run.base, previous, run.config, trainable=False)
    embeddings = run.round_embeddings(model, round_index, previous)
    info = {"seconds_embed": round(time.perf_counter() - began, 3)}
    info["added"] = run.kcenter(embeddings, run.config.per_round, chosen)
    info["embeddings"] = f"round {round_index - 1} model, hidden state {run.layer}"
    return info


def _kmeans(run: RoundRunner, round_index: int, chosen: list[int], previous: Path) -> dict:
    """k-means representatives of the unchosen rows in the previous model's space: typical
    rows of per_round clusters, where K-center takes the farthest (outliers, noise)."""
    from taskexpert.selection.kmeans import kmeans_representatives

    began = time.perf_counter()
    model = load_round_model(run.base, previous, run.config, trainable=False)
    embeddings = run.round_embeddings(model, round_index, previous)
    info = {"seconds_embed": round(time.perf_counter() - began, 3)}
    exclude = np.union1d(chosen, run.excluded(embeddings)).astype(np.int64)
    seed = round_seed(run.config, round_index)
    info["added"] = kmeans_representatives(embeddings, run.config.per_round, exclude, seed)
    info["embeddings"] = f"round {round_index - 1} model, hidden state {run.layer}"
    return info


def _uncertainty(measure: str) -> Strategy:
    def pick(run: RoundRunner, round_index: int, chosen: list[int], previous: Path) -> dict:
        model = load_round_model(run.base, previous, run.config, trainable=False)
        return run.most_uncertain(model, run.config.per_round, chosen, measure)

    pick.__doc__ = f"The {measure} baseline (selection.uncertainty) under the previous model."
    return pick


Strategy = Callable[["RoundRunner", int, list[int], Path], dict]
STRATEGIES: dict[str, Strategy] = {
    "kcenter": _kcenter,
    "random": _random,
    "least-confidence": _uncertainty("least-confidence"),
    "margin": _uncertainty("margin"),
    "entropy": _uncertainty("entropy"),
    "kcenter-oneshot": _kcenter_oneshot,
    "kmeans": _kmeans,
}


# ---- one round -------------------------------------------------------------------------------


class RoundRunner:
    """The state of one run: pool, base model, base embeddings; runs one round at a time."""

    def __init__(
        self,
        config: DiverseEvolConfig,
        run_dir: Path,
        pool: Sequence[Record],
        eval_records: list[Record] | None,
        leaked: np.ndarray | None = None,
    ) -> None:
        self.config, self.run_dir, self.pool = config, Path(run_dir), pool
        self.eval_records = eval_records
        # pool rows that are evaluation items: no strategy may pick them (--drop-leaked)
        self.leaked = np.empty(0, dtype=np.int64) if leaked is None else leaked
        self.base = self.tokenizer = None
        self.base_embeddings: np.ndarray | None = None
        self._loss_outliers: np.ndarray | None = None

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
        records = self.pool if rows is None else take(self.pool, rows)
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
        from taskexpert.lm_embed import hidden_size

        path = self.run_dir / BASE_EMBEDDINGS
        expected = {"rows": len(self.pool), "dim": hidden_size(self.base), "layer": self.layer}
        self.base_embeddings = _cached_rows(
            path, expected, lambda: self.embed_pool(self.base, path, "base embeddings")
        )
        return self.base_embeddings

    def base_losses(self) -> np.ndarray:
        """Each pool record's mean response-token NLL under the base model, once per run:
        what --loss-outlier-z reads. Streamed in chunks of records, so memory stays bounded
        by the chunk whatever the pool's size."""
        from taskexpert.lm import mean_nll
        from taskexpert.prompts import format_prompt

        path = self.run_dir / BASE_LOSSES
        max_length = self.config.train.max_length
        expected = {"rows": len(self.pool), "max_length": max_length}
        vocab = int(self.base.get_output_embeddings().weight.shape[0])
        rows = max(1, min(self.config.embed_batch_size, LOSS_LOGIT_BUDGET // (max_length * vocab)))

        def compute() -> np.ndarray:
            losses = np.empty(len(self.pool), np.float32)
            bar = progress_bar(total=len(self.pool), desc="base losses", unit="text",
                               enabled=self.config.progress)  # fmt: skip
            with bar:
                for lo in range(0, len(self.pool), LOSS_CHUNK):
                    chunk = self.pool[lo : lo + LOSS_CHUNK]
                    prompts = [format_prompt(r, self.tokenizer) for r in chunk]
                    losses[lo : lo + len(chunk)] = mean_nll(
                        self.base, self.tokenizer, prompts, [r.output for r in chunk],
                        batch_size=rows, max_length=max_length,
                    )  # fmt: skip
                    bar.update(len(chunk))
            tmp = path.with_name(f".{path.name}.tmp.npy")
            np.save(tmp, losses)
            tmp.replace(path)
            return np.load(path)

        return _cached_rows(path, expected, compute)

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

    def pickable(self, chosen: list[int]) -> np.ndarray:
        """The rows a strategy may add: neither chosen nor evaluation items."""
        return np.setdiff1d(np.arange(len(self.pool)), np.union1d(chosen, self.leaked))

    def excluded(self, embeddings: np.ndarray) -> np.ndarray:
        """Rows K-center and k-means may not pick: the --outlier-share farthest from the pool
        in this embedding, the base model's high-loss tail (--loss-outlier-z) and the
        evaluation items."""
        from taskexpert.selection.outliers import far_outliers, high_loss_rows

        far = far_outliers(embeddings, self.config.outlier_share, seed=self.config.seed)
        excluded = np.union1d(far, self.leaked)
        if self.config.loss_outlier_z:
            if self._loss_outliers is None:
                z = self.config.loss_outlier_z
                self._loss_outliers = high_loss_rows(self.base_losses(), z)
                log.info("%d pool records above the loss cut (z > %g) left out",
                         len(self._loss_outliers), z)  # fmt: skip
            excluded = np.union1d(excluded, self._loss_outliers)
        return excluded.astype(np.int64)

    def kcenter(self, embeddings: np.ndarray, k: int, chosen: list[int]) -> list[int]:
        from taskexpert.selection.kcenter import kcenter_greedy

        exclude = self.excluded(embeddings)
        if self.config.ray:
            from taskexpert.scaleout.select import ray_kcenter

            return ray_kcenter(
                self.config, embeddings, k, initial=chosen, progress=self.config.progress,
                exclude=exclude,
            )  # fmt: skip
        return kcenter_greedy(
            embeddings,
            k,
            initial=chosen,
            metric="euclidean",
            progress=self.config.progress,
            exclude=exclude,
        )

    def most_uncertain(self, model, k: int, chosen: list[int], measure: str) -> dict:
        from taskexpert.selection.uncertainty import most_uncertain, uncertainty_scores

        unchosen = self.pickable(chosen)
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

    def select(self, round_index: int, chosen: list[int], previous_dir: Path | None) -> dict:
        """Rows to add in round `round_index` (round 0: the seeded random draw)."""
        if round_index == 0:
            order = np.random.default_rng(self.config.seed).permutation(len(self.pool))
            order = order[~np.isin(order, self.leaked)]  # the same draw when nothing leaks
            added = order[: self.config.init].tolist()
            return {"strategy": "random init", "added": added}
        began = time.perf_counter()
        strategy = self.config.strategy
        picked = STRATEGIES[strategy](self, round_index, chosen, previous_dir)
        info = {"strategy": strategy, **picked}
        info["seconds_select"] = round(time.perf_counter() - began, 3)
        return info

    # -- training, evaluation, saving
    def train_round(self, round_index: int, rows: list[int], previous_dir: Path | None):
        from taskexpert.train import train

        config = self.config
        if round_index == 0 or config.restart_from_base:
            model = trainable_model(self.base, config, round_index)
        else:
            model = load_round_model(self.base, previous_dir, config, trainable=True)
        scratch = self.run_dir / "scratch" / f"train-{round_name(round_index)}"
        train_config = config.train.model_copy(
            update={
                "seed": round_seed(config, round_index),
                "progress": config.progress,
                "checkpoint_dir": scratch if config.checkpoint_every else None,
                "checkpoint_every": config.checkpoint_every,
                "resume": bool(config.checkpoint_every),
            }
        )
        result = train(model, self.tokenizer, take(self.pool, rows), train_config)
        return model, result

    def follow(self) -> None:
        """A process other than rank 0: train each round rank 0 announces, write nothing.

        Rank 0 selects, evaluates and writes the run; between rounds this process waits."""
        while (message := share_from_main()) is not None:
            round_index, rows, previous = message
            self.train_round(round_index, rows, Path(previous) if previous else None)

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

    def run_round(self, rundir: RunDir, round_index: int, chosen: list[int]):
        """Select, train, evaluate, save: rounds/NN appears whole, with its marker, or not at
        all. Returns (summary, rows)."""
        from taskexpert.selection.vendi import vendi_score

        config = self.config
        began = time.perf_counter()
        previous_dir = self.round_dir(round_index - 1) if round_index else None
        info = self.select(round_index, chosen, previous_dir)
        added = [int(i) for i in info.pop("added")]
        rows = chosen + added
        with rundir.step(f"rounds/{round_name(round_index)}", {"round": round_index}) as tmp:
            write_records(tmp / "subset.jsonl", take(self.pool, rows))
            write_json(tmp / "selection.json", {"rows": rows, "added": added, **info})
            if world_size() > 1:  # the other processes train these rows with us (`follow`)
                share_from_main((round_index, rows, str(previous_dir) if previous_dir else None))
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
        remove_tree(self.run_dir / "scratch")
        return summary, rows

    def round_dir(self, round_index: int) -> Path:
        return self.run_dir / "rounds" / round_name(round_index)
