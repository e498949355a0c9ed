"""Score a LoRA bank with Ray actors: one base model per worker, adapters streamed to it.

The scale-out path of Stage 1 (docs/design.md, "Scale-out"). Each actor loads the base model once
with the loader the single-process path uses (`taskexpert.models.load_base`), receives shards of
adapter paths, reads one adapter at a time and scores it with `score_bank` itself. So the
numbers are computed by the same code, the results are the same `AdapterScore` objects, and
grouping downstream does not change. Ray is an optional extra: `pip install 'taskexpert[ray]'`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from taskexpert.bank import SAFETENSORS_FILE, Bank, LoraAdapter, load_adapter
from taskexpert.errors import InputError, TaskexpertError
from taskexpert.experts.scoring import (
    BASE_ROW,
    AdapterScore,
    KShotTask,
    OnScore,
    ScoringConfig,
    score_bank,
)
from taskexpert.progress import progress as progress_bar
from taskexpert.runtime import pin_process_threads
from taskexpert.scaleout.cluster import (  # noqa: F401 (import_ray: this module's API)
    INSTALL_HINT,
    LOCAL,
    check_resources,
    gpus_per_actor,
    import_ray,
    ray_cluster,
)

# () -> (model, tokenizer); runs once inside each worker, so it must be picklable by reference
BaseLoader = Callable[[], tuple]
# What a worker is sent per adapter: a safetensors directory to read, or the factors themselves
ShardItem = tuple[str, "str | LoraAdapter"]


def base_loader(name_or_path: str | Path, **options) -> BaseLoader:
    """`models.load_base` with its options bound, picklable, so the driver and every worker load
    the base the same way ('auto' devices resolve inside each worker)."""
    from taskexpert.models import load_base

    return functools.partial(load_base, str(name_or_path), **options)


class AdapterStream(Mapping):
    """A shard as the mapping `score_bank` takes, reading each adapter only when reached.

    A worker then holds one adapter's weights at a time, whatever the shard's size.
    """

    def __init__(self, items: Sequence[ShardItem]) -> None:
        self._items = dict(items)

    def __getitem__(self, name: str) -> LoraAdapter:
        source = self._items[name]
        return source if isinstance(source, LoraAdapter) else load_adapter(source, name=name)

    def __contains__(self, name: object) -> bool:
        return name in self._items  # never read weights just to answer membership

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def shard_items(adapters: Mapping[str, LoraAdapter], ship_weights: bool = False) -> list[ShardItem]:
    """Paths where workers can reread safetensors themselves; otherwise the factors are sent.

    Adapters built in memory or read from pickles (which workers must not load) always travel
    as tensors; `ship_weights` forces that for clusters without a shared filesystem.
    """
    items: list[ShardItem] = []
    for name, adapter in adapters.items():
        path = Path(adapter.path) if adapter.path is not None else None
        if not ship_weights and path is not None and (path / SAFETENSORS_FILE).is_file():
            items.append((name, str(path.resolve())))
        else:
            items.append((name, adapter))
    return items


def chunk(items: Sequence[ShardItem], size: int) -> list[list[ShardItem]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


class ScoringWorker:
    """One Ray actor: the base model loaded once, scoring whole shards with `score_bank`."""

    def __init__(self, load: BaseLoader, task: KShotTask, config: ScoringConfig, threads: int):
        pin_process_threads(threads)
        self.model, self.tokenizer = load()
        self.task, self.config = task, config

    def score(self, shard: list[ShardItem], include_base: bool) -> dict[str, AdapterScore]:
        return score_bank(
            self.model,
            self.tokenizer,
            AdapterStream(shard),
            self.task,
            self.config,
            include_base=include_base,
            progress=False,
        )


def _unwrap(ray, exc: Exception) -> Exception:
    """A worker's user-facing error (a corrupt adapter, say) surfaces as itself, unwrapped."""
    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, TaskexpertError):
        return cause
    return TaskexpertError(f"a Ray scoring worker failed: {exc}")


def score_bank_distributed(
    load: BaseLoader,
    adapters: Bank | Mapping[str, LoraAdapter],
    task: KShotTask,
    config: ScoringConfig | None = None,
    *,
    workers: int = 2,
    num_gpus_per_worker: float | None = 0,
    num_cpus_per_worker: float = 1,
    chunk_size: int | None = None,
    ship_weights: bool = False,
    include_base: bool = True,
    progress: bool = True,
    on_score: OnScore | None = None,
    address: str = LOCAL,
) -> dict[str, AdapterScore]:
    """`score_bank`'s result (base row first, then bank order), computed by `workers` actors;
    `on_score(name, score)` is called in the driver as each chunk comes back.

    Adapters go out in chunks (default: about four per worker) to whichever actor is free, so
    a slow worker does not hold the others back; `seconds` per adapter is switch + scoring.
    `address` is `--ray`'s (scaleout.cluster); `num_gpus_per_worker=None`: 1 when the cluster
    has GPUs, else 0.
    """
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}", field="workers")
    config = config or ScoringConfig()
    adapters = adapters.adapters if isinstance(adapters, Bank) else adapters
    if BASE_ROW in adapters:
        raise InputError(f"an adapter may not be called {BASE_ROW!r}; that row is the base model")
    items = shard_items(adapters, ship_weights)
    size = chunk_size or max(1, math.ceil(len(items) / (4 * workers)))
    jobs = ([([], True)] if include_base else []) + [(c, False) for c in chunk(items, size)]
    workers = min(workers, max(1, len(jobs)))
    threads = max(1, int(num_cpus_per_worker))
    results: dict[str, AdapterScore] = {}
    with ray_cluster(address, workers * num_cpus_per_worker) as ray:
        from ray.util import ActorPool

        gpus = gpus_per_actor(ray, num_gpus_per_worker)
        check_resources(ray, workers, num_cpus_per_worker, gpus)
        actor = ray.remote(num_cpus=num_cpus_per_worker, num_gpus=gpus)(ScoringWorker)
        task_ref = ray.put(task)
        pool = ActorPool([actor.remote(load, task_ref, config, threads) for _ in range(workers)])
        bar = progress_bar(
            total=len(items) + include_base,
            desc="scoring adapters",
            unit="adapter",
            enabled=progress,
        )
        try:
            for scores in pool.map_unordered(lambda a, job: a.score.remote(*job), jobs):
                results.update(scores)
                if on_score is not None:
                    for name, score in scores.items():
                        on_score(name, score)
                bar.update(len(scores))
        except ray.exceptions.RayError as exc:
            raise _unwrap(ray, exc) from None
        finally:
            bar.close()
    order = ([BASE_ROW] if include_base else []) + list(adapters)
    return {name: results[name] for name in order}


@dataclass
class RayBankScorer:
    """A drop-in for `score_bank` in `select_experts`: same call, scored by Ray actors.

    The driver's model is only used for validation there; each worker loads its own with
    `load`, so pass the same loader (path, dtype) the driver used, e.g. `base_loader(...)`.
    """

    load: BaseLoader
    workers: int = 2
    num_gpus_per_worker: float | None = 0
    num_cpus_per_worker: float = 1
    chunk_size: int | None = None
    ship_weights: bool = False
    address: str = LOCAL

    def __call__(
        self,
        base_model,
        tokenizer,
        adapters: Bank | Mapping[str, LoraAdapter],
        task: KShotTask,
        config: ScoringConfig | None = None,
        include_base: bool = True,
        progress: bool = True,
        on_score: OnScore | None = None,
    ) -> dict[str, AdapterScore]:
        return score_bank_distributed(
            self.load,
            adapters,
            task,
            config,
            workers=self.workers,
            num_gpus_per_worker=self.num_gpus_per_worker,
            num_cpus_per_worker=self.num_cpus_per_worker,
            chunk_size=self.chunk_size,
            ship_weights=self.ship_weights,
            include_base=include_base,
            progress=progress,
            on_score=on_score,
            address=self.address,
        )
