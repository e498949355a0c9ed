"""Cold data selection on the real open pool, each mode side by side with the default (issue 20).

Modes (comma list, `--modes`): an encoder name for a full pass (`default` = MiniLM in torch,
fp32, 256 tokens; `onnx`; `onnx-int8`; `static`; `-len<N>` appended cuts texts at N tokens), or
`two-stage-<encoder>-f<F>` (the static encoder shortlists F x budget, <encoder> re-ranks). Each
mode starts from an empty embedding cache (cold: the model already exported or distilled, timed
apart as `prepare_s`), then runs again (warm), on the GSM8K K-shot (50 train items, seeded;
their questions are removed from the pool) and then on the ARC-Challenge CoT 50-shot. Quality
against the default: per K-shot, the max absolute difference of source shares (points), the
overlap of the selected ids, and the cosine agreement (mean/min) of the mode's encoder with
MiniLM on `--agreement-n` pool texts. Every encoder runs with `--threads` threads (torch and
ONNX Runtime alike); the load average is recorded at the start and end. `--pool-sample N` runs
on a seeded sample of the pool (for a busy machine); `--reference MODE` compares with another
mode than the torch default (onnx-int8: what `auto` takes on a CPU); `--reference-cache DIR`
keeps the reference's embeddings there (reused across runs, so its cold time is only measured
when that cache starts empty).

    .venv/bin/python benchmarks/bench_cold_selection.py --threads 2
    .venv/bin/python benchmarks/bench_cold_selection.py --pool-sample 3000 --budget 60
    .venv/bin/python benchmarks/bench_cold_selection.py --reference onnx-int8 \
        --reference-cache ~/.cache/taskexpert/embeddings --modes two-stage-onnx-int8-f10

Prints one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import SHARED_DATA

MODES = "default,onnx,onnx-int8,two-stage-onnx-int8-f3,two-stage-default-f10"
ARC_KSHOT = "rocket-arc-kshot/arc-c_cot_50shot.jsonl"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _encoder(name: str, threads: int, models_dir: Path):
    """An encoder by bench name; a `-len<N>` suffix cuts texts at N tokens instead of 256."""
    from taskexpert.embed import DEFAULT_MAX_SEQ_LENGTH, SentenceEncoder, StaticEncoder
    from taskexpert.onnx_embed import OnnxEncoder

    match = re.fullmatch(r"(.+)-len(\d+)", name)
    name, length = (match.group(1), int(match.group(2))) if match else (name, None)
    length = length or DEFAULT_MAX_SEQ_LENGTH
    if name == "default":
        return SentenceEncoder(device="cpu", max_seq_length=length)
    if name == "static":
        return StaticEncoder(models_dir=models_dir)
    if name in ("onnx", "onnx-int8"):
        precision = "int8" if name == "onnx-int8" else "fp32"
        return OnnxEncoder(
            precision=precision, max_seq_length=length, threads=threads, models_dir=models_dir
        )
    raise SystemExit(f"unknown encoder {name!r}")


def _parse_mode(mode: str) -> tuple[str, int | None]:
    """(encoder, shortlist factor or None for a full pass)."""
    match = re.fullmatch(r"two-stage-(.+)-f(\d+)", mode)
    return (match.group(1), int(match.group(2))) if match else (mode, None)


def _prepare(encoder) -> float:
    """Load, export or distill the model (a one-off kept on disk), timed apart from selection."""
    t = time.perf_counter()
    encoder.embed(["warm-up"], progress=False)
    return time.perf_counter() - t


def _shares(records) -> dict[str, float]:
    counts = Counter(r.source or "unknown" for r in records)
    return {s: n / max(1, len(records)) for s, n in counts.items()}


def _max_share_diff(a: dict[str, float], b: dict[str, float]) -> float:
    return round(100 * max(abs(a.get(s, 0.0) - b.get(s, 0.0)) for s in a.keys() | b.keys()), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=SHARED_DATA)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--kshot-size", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default=MODES)
    parser.add_argument("--threads", type=int, default=2, help="fixed for every encoder")
    parser.add_argument("--pool-sample", type=int, default=None, help="seeded pool sample size")
    parser.add_argument("--agreement-n", type=int, default=200)
    parser.add_argument("--work-dir", type=Path, default=None, help="caches go here (tmp)")
    parser.add_argument("--models-dir", type=Path, default=None, help="exported/distilled models")
    parser.add_argument(
        "--reference",
        default="default",
        help="the mode the others are compared with (`auto` takes onnx-int8 on a CPU)",
    )
    parser.add_argument("--reference-cache", type=Path, default=None)
    args = parser.parse_args()
    load_start = os.getloadavg()

    from taskexpert.embed import EmbeddingCache, cache_root, embed_texts
    from taskexpert.importers import import_all_pools, import_dataset
    from taskexpert.runtime import pinned_threads
    from taskexpert.selection.retrieve import select_data

    train = list(import_dataset("gsm8k", args.shared / "gsm8k", split="train"))
    kshots = {
        "gsm8k": random.Random(args.seed).sample(train, args.kshot_size),
        "arc_c": list(import_dataset("rocket-arc", args.shared / ARC_KSHOT)),
    }
    pool = list(
        import_all_pools(args.shared, exclude_instructions=[r.instruction for r in kshots["gsm8k"]])
    )
    if args.pool_sample:
        pool = random.Random(args.seed).sample(pool, min(args.pool_sample, len(pool)))
    _log(f"pool {len(pool)} records, budget {args.budget}, threads {args.threads}")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_cold_selection."))
    models_dir = args.models_dir or cache_root() / "models"
    sample = [r.text for r in random.Random(args.seed + 1).sample(pool, args.agreement_n)]

    def select(mode: str, kshot, cache_dir: Path):
        name, factor = _parse_mode(mode)
        embedder = _encoder(name, args.threads, models_dir)
        shortlist = _encoder("static", args.threads, models_dir) if factor else None
        prepare_s = _prepare(embedder) + (_prepare(shortlist) if shortlist else 0.0)
        t = time.perf_counter()
        result = select_data(
            pool,
            kshot,
            args.budget,
            embedder=embedder,
            shortlist_embedder=shortlist,
            shortlist_factor=factor or 10,
            cache=EmbeddingCache(cache_dir),
            progress=False,
        )
        return result, time.perf_counter() - t, prepare_s, embedder

    results: dict[str, dict] = {}
    reference: dict[str, object] = {}
    vectors_default = None
    with pinned_threads(args.threads):
        ref = args.reference
        for mode in [ref, *[m for m in args.modes.split(",") if m != ref]]:
            if mode == ref and args.reference_cache:
                cache_dir = args.reference_cache
            else:
                cache_dir = work / f"cache-{mode}"
            cold = cache_dir.is_dir() and any(cache_dir.iterdir())
            row: dict = {"cache": str(cache_dir), "cold": not cold}
            _log(f"[{mode}] {'warm cache' if cold else 'cold'} run")
            first, seconds, prepare_s, embedder = select(mode, kshots["gsm8k"], cache_dir)
            row |= {"encoder": embedder.name, "prepare_s": round(prepare_s, 2)}
            row["cold_s" if not cold else "first_s"] = round(seconds, 2)
            row["first_timings_s"] = first.summary["timings_s"]
            warm, warm_s, _, _ = select(mode, kshots["gsm8k"], cache_dir)
            row["warm_s"] = round(warm_s, 2)
            embedded = first.summary["cache"]["misses"]
            pass_s = first.summary["timings_s"].get("pool_pass_s", 0.0) + first.summary[
                "timings_s"
            ].get("rerank_s", 0.0)
            row["texts_embedded_first"] = embedded
            row["texts_per_s"] = round(embedded / pass_s, 1) if pass_s and not cold else None
            outcomes = {"gsm8k": warm}
            arc, arc_s, _, _ = select(mode, kshots["arc_c"], cache_dir)
            outcomes["arc_c"] = arc
            row["arc_s"] = round(arc_s, 2)
            t = time.perf_counter()
            vectors = embed_texts(sample, embedder, EmbeddingCache(cache_dir), progress=False)
            row["agreement_embed_s"] = round(time.perf_counter() - t, 2)
            if mode == ref:
                reference, vectors_default = outcomes, vectors
            cosine = (vectors * vectors_default).sum(axis=1)
            row["cosine_vs_default"] = {
                "mean": round(float(cosine.mean()), 5),
                "min": round(float(cosine.min()), 5),
            }
            for key, outcome in outcomes.items():
                ids = {r.id for r in outcome.records}
                ref_ids = {r.id for r in reference[key].records}
                row[key] = {
                    "max_share_diff_points": _max_share_diff(
                        _shares(outcome.records), _shares(reference[key].records)
                    ),
                    "overlap_with_default": round(len(ids & ref_ids) / max(1, len(ref_ids)), 4),
                    "selected_per_source": outcome.summary["selected_per_source"],
                }
            row["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
            results[mode] = row
            _log(f"[{mode}] {json.dumps(row)}")
    print(
        json.dumps(
            {
                "bench": "cold_selection",
                "pool_size": len(pool),
                "pool_sample": args.pool_sample,
                "budget": args.budget,
                "kshots": {
                    "gsm8k": f"train, {args.kshot_size} items, seed {args.seed}",
                    "arc_c": ARC_KSHOT,
                },
                "threads": args.threads,
                "cpu_count": os.cpu_count(),
                "load_avg_start": [round(x, 2) for x in load_start],
                "load_avg_end": [round(x, 2) for x in os.getloadavg()],
                "modes": results,
            }
        )
    )


if __name__ == "__main__":
    main()
