"""Embedding on Ray Data: shards of the pool's texts through `map_batches` with an actor class
that loads the encoder once (on a GPU when the actor has one), each shard written to disk.

Resumable per shard: the plan (`index.json`) names every shard's rows and the sha1 of its
texts; a rerun embeds only the shards whose file is missing or whose texts changed. Actors
write the shard files themselves, so on a cluster the directory must be on a shared disk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from taskexpert.scaleout.shards import (
    Shard,
    finished,
    open_shards,
    read_index,
    shard_name,
    text_digest,
    write_index,
    write_shard,
)

# Rows per shard: a multiple of retrieval's chunk (8,192), so a shard scores the very chunks
# one process scores (selection.retrieve), and of the embedding cache's default shard.
SHARD_ROWS = 16_384


class EncoderActor:
    """A Ray Data actor: the encoder loaded once, each batch a list of shards to embed."""

    def __init__(self, spec: str, directory: str, device: str, batch_size: int | None) -> None:
        from taskexpert.embed import resolve_embedder

        self.embedder = resolve_embedder(spec, device=device)
        self.directory, self.batch_size = Path(directory), batch_size

    def __call__(self, batch: dict) -> dict:
        rows = []
        for k, texts in zip(batch["shard"], batch["texts"]):
            kwargs = {"batch_size": self.batch_size} if self.batch_size else {}
            vectors = self.embedder.embed([str(t) for t in texts], progress=False, **kwargs)
            write_shard(self.directory, int(k), vectors)
            rows.append(len(vectors))
        return {"shard": np.asarray(batch["shard"]), "rows": np.asarray(rows)}


def plan(texts: list[str], shard_rows: int = SHARD_ROWS) -> list[dict]:
    return [
        {
            "file": shard_name(k),
            "start": start,
            "rows": min(shard_rows, len(texts) - start),
            "texts_sha1": text_digest(texts[start : start + shard_rows]),
        }
        for k, start in enumerate(range(0, len(texts), shard_rows))
    ]


def actor_encoder(encoder: str, gpus_per_actor: float) -> str:
    """`encoder` with `auto` resolved for the actors' hardware (embed.auto_encoder), so the
    shard index, and the K-shot embedded beside them, name what the actors run."""
    from taskexpert.embed import auto_encoder

    return auto_encoder("cuda" if gpus_per_actor else "cpu") if encoder == "auto" else encoder


def embed_to_shards(
    ray,
    texts: list[str],
    directory: str | Path,
    encoder: str = "default",
    *,
    actors: int = 2,
    gpus_per_actor: float = 0,
    device: str = "auto",
    batch_size: int | None = None,
    shard_rows: int = SHARD_ROWS,
    progress: bool = True,
) -> tuple[list[Shard], int, dict]:
    """Embed `texts` into shard files under `directory`; the shards, their dimension and
    counts (`embedded`, `reused` shards). Finished shards of the same texts are kept."""
    from taskexpert.embed import resolve_embedder
    from taskexpert.progress import progress as progress_bar

    encoder = actor_encoder(encoder, gpus_per_actor)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = resolve_embedder(encoder, device="cpu").name  # names only: loads no model
    entries = plan(texts, shard_rows)
    old = read_index(directory)
    same = {}
    if old is not None and old.get("encoder") == name:
        same = {e["file"]: e for e in old.get("shards", [])}
    todo = [
        k for k, e in enumerate(entries)
        if same.get(e["file"]) != e or not finished(directory, e)
    ]  # fmt: skip
    for k in todo:
        (directory / entries[k]["file"]).unlink(missing_ok=True)
    write_index(directory, name, entries)
    if todo:
        import ray.data

        items = [
            {
                "shard": k,
                "texts": texts[entries[k]["start"] : entries[k]["start"] + entries[k]["rows"]],
            }
            for k in todo
        ]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        embedded = dataset.map_batches(
            EncoderActor,
            fn_constructor_kwargs={
                "spec": encoder,
                "directory": str(directory),
                "device": device,
                "batch_size": batch_size,
            },
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=max(1, min(actors, len(todo)))),
            num_cpus=1,
            num_gpus=gpus_per_actor,
        )
        with progress_bar(
            total=len(texts), desc="embedding (ray)", unit="text", enabled=progress
        ) as bar:
            for row in embedded.iter_rows():
                bar.update(int(row["rows"]))
    shards, dim = open_shards(directory)
    return shards, dim, {"embedded": len(todo), "reused": len(entries) - len(todo)}
