"""Causal-LM embedder throughput and the 10^6-row O(N)-memory path (issue 6, item 5).

    .venv/bin/python benchmarks/bench_lm_embed.py --testbed DIR      # a built testbed
    .venv/bin/python benchmarks/bench_lm_embed.py --quick            # small sizes, seconds

Part 1, throughput on the testbed model: the pool's training-format sequences (prompt + output,
what DiverseEvol embeds) through `pooled_hidden_states`, for the last layer (backbone only, no
LM head) and a middle layer (forward pre-hook that stops early), against the reference code's
way (one sequence at a time through the full causal LM with `output_hidden_states=True`).

Part 2, scale: N synthetic short texts (generated on demand, never held as a list) embedded by
a tiny random Llama into a .npy memmap, then K-center picks streamed from that memmap. Peak
anonymous memory (heap, not the file-backed pages of the memmap) is sampled every 50 ms and
compared with the bytes of the output matrix.

Prints one JSON line on stdout; progress goes to stderr. Threads: 1 unless --threads (two
threads on two shared busy cores were up to 20x slower here).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from common import standard_testbed

MB = 1 << 20
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def anon_rss() -> int:
    """Resident anonymous bytes (heap, stacks): excludes file-backed memmap pages."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakSampler:
    """Samples RssAnon in a thread; `.peak` is the highest value seen."""

    def __init__(self, every: float = 0.05) -> None:
        self.every, self.peak, self._stop = every, anon_rss(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, anon_rss())

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, anon_rss())


class SyntheticTexts(Sequence):
    """N distinct short instruction-like texts, made on demand from the index."""

    WORDS = "reverse shift count add multiply list sum story apple river stone bird".split()

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not 0 <= i < self.n:
            raise IndexError(i)
        w = self.WORDS
        extra = " and then".join(w[(i >> k) % len(w)] for k in range(0, 2 + i % 3 * 4, 4))
        return f"Item {i}: {w[i % len(w)]} {w[(i // 7) % len(w)]} {extra}."


def log(message: str) -> None:
    print(f"[lm_embed] {message}", file=sys.stderr, flush=True)


def reference_way(model, sequences: list[list[int]], layer: int) -> float:
    """Seconds for the DiverseEvol reference code's loop (one sequence, full LM, all states)."""
    began = time.perf_counter()
    with torch.inference_mode():
        for seq in sequences:
            out = model(input_ids=torch.tensor([seq]), output_hidden_states=True)
            out.hidden_states[layer][0].mean(dim=0)
    return time.perf_counter() - began


def part_throughput(testbed: Path, n: int, batch_sizes: list[int], reference_n: int) -> dict:
    from taskexpert.lm import ensure_pad_token
    from taskexpert.lm_embed import num_layers, pooled_hidden_states, train_format_ids
    from taskexpert.models import load_base
    from taskexpert.records import read_records

    model, tokenizer = load_base(str(testbed / "base"), device="cpu")
    pad = ensure_pad_token(tokenizer)
    records = []
    for record in read_records(testbed / "pool.jsonl"):
        records.append(record)
        if len(records) == n:
            break
    began = time.perf_counter()
    sequences = list(train_format_ids(tokenizer, records, 512))
    tokenize_seconds = time.perf_counter() - began
    tokens = sum(len(s) for s in sequences)
    layers = num_layers(model)
    result = {
        "model": str(testbed / "base"),
        "params": sum(p.numel() for p in model.parameters()),
        "hidden": int(model.config.hidden_size),
        "layers": layers,
        "texts": len(sequences),
        "mean_tokens": round(tokens / len(sequences), 1),
        "tokenize_texts_per_s": round(len(sequences) / tokenize_seconds, 1),
        "runs": [],
    }
    for layer in ("last", max(1, layers // 2)):
        for batch in batch_sizes:
            pooled_hidden_states(model, sequences[:64], 64, layer=layer, pad_id=pad, progress=False)
            began = time.perf_counter()
            pooled_hidden_states(
                model, sequences, len(sequences), layer=layer, batch_size=batch, pad_id=pad,
                progress=False,
            )  # fmt: skip
            seconds = time.perf_counter() - began
            result["runs"].append(
                {
                    "layer": layer,
                    "batch_size": batch,
                    "seconds": round(seconds, 3),
                    "texts_per_s": round(len(sequences) / seconds, 1),
                    "tokens_per_s": round(tokens / seconds, 1),
                }
            )
            log(f"layer {layer} batch {batch}: {len(sequences) / seconds:.0f} texts/s")
    subset = sequences[:reference_n]
    ref_seconds = reference_way(model, subset, -1)
    ours = pooled_hidden_states  # same subset, our default batch, for a like-for-like ratio
    began = time.perf_counter()
    ours(model, subset, len(subset), pad_id=pad, progress=False)
    our_seconds = time.perf_counter() - began
    result["reference_loop"] = {
        "texts": len(subset),
        "texts_per_s": round(len(subset) / ref_seconds, 1),
        "ours_texts_per_s": round(len(subset) / our_seconds, 1),
        "speedup": round(ref_seconds / our_seconds, 2),
    }
    return result


def part_scale(rows: int, hidden: int, layers: int, picks: int, batch: int) -> dict:
    from conftest import make_char_tokenizer, make_tiny_llama

    from taskexpert.lm_embed import CausalLMEmbedder
    from taskexpert.selection.kcenter import kcenter_greedy

    tokenizer = make_char_tokenizer()
    model = make_tiny_llama(len(tokenizer), hidden=hidden, layers=layers)
    texts = SyntheticTexts(rows)
    mean_chars = float(np.mean([len(texts[i]) for i in range(0, rows, max(1, rows // 1000))]))
    embedder = CausalLMEmbedder(model, tokenizer, max_length=128)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pool.npy"
        baseline = anon_rss()
        log(f"embedding {rows} synthetic texts into a memmap")
        with PeakSampler() as sampler:
            began = time.perf_counter()
            matrix = embedder.embed_to_file(texts, path, batch_size=batch, progress=True)
            seconds = time.perf_counter() - began
        output_bytes = matrix.nbytes
        finite = bool(np.isfinite(matrix[:: max(1, rows // 10_000)]).all())
        log(f"k-center: {picks} picks on the memmap")
        with PeakSampler() as kc_sampler:
            began = time.perf_counter()
            chosen = kcenter_greedy(matrix, picks, seed=0, progress=False)
            kc_seconds = time.perf_counter() - began
        return {
            "rows": rows,
            "dim": hidden,
            "layers": layers,
            "mean_chars": round(mean_chars, 1),
            "embed_seconds": round(seconds, 1),
            "texts_per_s": round(rows / seconds, 1),
            "output_mb": round(output_bytes / MB, 1),
            "embed_peak_anon_mb_above_start": round((sampler.peak - baseline) / MB, 1),
            "rows_finite": finite,
            "kcenter_picks": len(chosen),
            "kcenter_seconds": round(kc_seconds, 2),
            "kcenter_seconds_per_pick": round(kc_seconds / picks, 4),
            "kcenter_peak_anon_mb_above_start": round((kc_sampler.peak - baseline) / MB, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--testbed", help="a built testbed directory [default: find standard]")
    parser.add_argument("--texts", type=int, default=3000, help="pool texts for part 1")
    parser.add_argument("--batch-sizes", default="16,64", help="part 1 batch sizes")
    parser.add_argument("--reference-texts", type=int, default=300)
    parser.add_argument("--rows", type=int, default=1_000_000, help="part 2 rows")
    parser.add_argument("--scale-hidden", type=int, default=32)
    parser.add_argument("--scale-layers", type=int, default=2)
    parser.add_argument("--scale-batch", type=int, default=256)
    parser.add_argument("--picks", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parts", default="throughput,scale", help="which parts to run")
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    args = parser.parse_args()
    if args.quick:
        args.texts, args.reference_texts, args.rows, args.picks = 300, 50, 20_000, 5
    torch.set_num_threads(args.threads)
    out: dict = {"threads": args.threads}
    parts = args.parts.split(",")
    if "throughput" in parts:
        testbed = standard_testbed(args.testbed)
        if testbed is None:
            from taskexpert.testbed import build_testbed

            testbed = Path(tempfile.mkdtemp()) / "micro"
            log("no standard testbed found: building micro (a 1-layer toy model)")
            out["note"] = "throughput measured on the micro testbed: no standard build found"
            build_testbed(testbed, "micro", 0, progress=False)
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        out["throughput"] = part_throughput(testbed, args.texts, batch_sizes, args.reference_texts)
    if "scale" in parts:
        out["scale"] = part_scale(
            args.rows, args.scale_hidden, args.scale_layers, args.picks, args.scale_batch
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
