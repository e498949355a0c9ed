"""K-center greedy speed and memory: per pick against one streaming pass, O(N) extra memory,
the N x N approach of the DiverseEvol reference, and the half-precision mode.

    .venv/bin/python benchmarks/bench_kcenter.py            # the full run (several minutes)
    .venv/bin/python benchmarks/bench_kcenter.py --quick    # small sizes, seconds

Each case runs in its own process so its peak RSS is its own. Prints one JSON line on stdout;
progress goes to stderr. Random float32 data, seeded; memory-bandwidth bound, so results move
with whatever else runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from taskexpert.runtime import pinned_threads
from taskexpert.selection.kcenter import (
    default_chunk_rows,
    half_precision_copy,
    kcenter_greedy,
    streaming_pass,
)

MB = 1 << 20


def rss_now() -> int:
    """Resident bytes now (file-backed pages of a memmap included)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def reset_peak() -> bool:
    """Restart the kernel's peak-RSS counter (VmHWM), so a peak belongs to one phase."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_since_reset() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def random_matrix(n: int, dim: int, seed: int, path: Path | None = None) -> np.ndarray:
    """Seeded standard-normal float32 rows, in RAM or written chunk by chunk into a memmap."""
    rng = np.random.default_rng(seed)
    if path is None:
        return rng.standard_normal((n, dim), dtype=np.float32)
    matrix = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for lo in range(0, n, 65536):
        rng.standard_normal(
            (min(65536, n - lo), dim), dtype=np.float32, out=matrix[lo : lo + 65536]
        )
    matrix.flush()
    del matrix
    return np.load(path, mmap_mode="r")


def time_pass(matrix: np.ndarray, repeats: int = 5) -> float:
    """Median seconds of one chunked matrix-vector product (after one warm-up pass), with the
    same one thread as kcenter_greedy's default."""
    vector = np.random.default_rng(1).standard_normal(matrix.shape[1], dtype=np.float32)
    times = []
    with pinned_threads(1, import_torch=matrix.dtype == np.float16):
        streaming_pass(matrix, vector, threads=None)
        for _ in range(repeats):
            started = time.perf_counter()
            streaming_pass(matrix, vector, threads=None)
            times.append(time.perf_counter() - started)
    return float(np.median(times))


def preload_torch() -> None:
    """Import torch before any timing: its import is not the method's time."""
    import torch  # noqa: F401


def run_kcenter(matrix: np.ndarray, k: int, **kwargs) -> tuple[list[int], dict]:
    """Picks plus seconds, per pick, and the peak memory added on top of the resident matrix."""
    before = rss_now()
    reset_peak()
    started = time.perf_counter()
    picks = kcenter_greedy(matrix, k, **kwargs)
    seconds = time.perf_counter() - started
    extra = max(0, peak_since_reset() - before)
    return picks, {
        "seconds": round(seconds, 3),
        "seconds_per_pick": round(seconds / k, 6),
        "extra_peak_mb": round(extra / MB, 1),
    }


def case_stream(n: int, dim: int, k: int, memmap: bool, half_compare: int) -> dict:
    """K-center at (n, dim, k) against the pass floor; optionally the float16 mode beside it."""
    if half_compare:
        preload_torch()
    with tempfile.TemporaryDirectory(dir=Path(tempfile.gettempdir())) as tmp:
        path = Path(tmp) / "embeddings.npy" if memmap else None
        print(f"[kcenter] generating {n} x {dim}", file=sys.stderr)
        matrix = random_matrix(n, dim, seed=0, path=path)
        pass_seconds = time_pass(matrix)
        picks, stats = run_kcenter(matrix, k, seed=0)
        result = {
            "n": n,
            "dim": dim,
            "k": k,
            "memmap": memmap,
            "chunk_rows": default_chunk_rows(dim),
            "matrix_mb": round(matrix.nbytes / MB, 1),
            **stats,
            "pass_seconds": round(pass_seconds, 5),
            "pick_over_pass": round(stats["seconds_per_pick"] / pass_seconds, 2),
            # getrusage's maximum restarts with reset_peak(): this is the peak during kcenter
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        if half_compare:
            started = time.perf_counter()
            half = half_precision_copy(matrix)
            convert = time.perf_counter() - started
            half_pass = time_pass(half)
            compare = min(half_compare, k)
            half_picks, half_stats = run_kcenter(half, k, seed=0)
            first = next((i for i in range(compare) if picks[i] != half_picks[i]), compare)
            result["half"] = {
                **half_stats,
                "convert_seconds": round(convert, 3),
                "pass_seconds": round(half_pass, 5),
                "pick_over_pass": round(half_stats["seconds_per_pick"] / half_pass, 2),
                "speedup_per_pick": round(
                    stats["seconds_per_pick"] / half_stats["seconds_per_pick"], 2
                ),
                "speedup_pass": round(pass_seconds / half_pass, 2),
                "compared_picks": compare,
                "differ_in_order": sum(
                    a != b for a, b in zip(picks[:compare], half_picks[:compare])
                ),
                "differ_as_set": len(set(picks[:compare]) - set(half_picks[:compare])),
                "first_difference": first,
            }
        del matrix
    return result


def diverseevol_reference(x: np.ndarray, labeled: np.ndarray, k: int) -> list[int]:
    """The reference's query(): the full N x N distance matrix once, then per pick a min over
    the unlabeled x labeled block, rebuilt by a row deletion and a column concat."""
    import torch

    emb = torch.from_numpy(x)
    n = emb.shape[0]
    dist_mat = torch.matmul(emb, emb.t())  # their partition step (1e10) is one block
    sq = dist_mat.diagonal().clone().reshape(n, 1)
    dist_mat *= -2
    dist_mat += sq
    dist_mat += sq.t()
    dist_mat = torch.sqrt(dist_mat)
    labeled_tmp = torch.zeros(n, dtype=torch.bool)
    labeled_tmp[torch.from_numpy(labeled)] = True
    mat = dist_mat[~labeled_tmp, :][:, labeled_tmp]
    picks = []
    for _ in range(k):
        q_tmp = mat.min(dim=1).values.argmax()
        q = torch.arange(n)[~labeled_tmp][q_tmp]
        labeled_tmp[q] = True
        keep = torch.ones(mat.shape[0], dtype=torch.bool)
        keep[q_tmp] = False
        mat = mat[keep, :].reshape(-1, mat.shape[1])
        mat = torch.concat((mat, dist_mat[~labeled_tmp, q][:, None]), dim=1)
        picks.append(int(q))
    return picks


def float64_definition(x: np.ndarray, labeled: np.ndarray, k: int) -> list[int]:
    """The definition in float64 (running minimum; norm trick at 1e-16): the yardstick for
    near-ties that float32 cannot order."""
    x64 = x.astype(np.float64)
    norms = np.einsum("ij,ij->i", x64, x64)
    nearest = np.full(len(x64), np.inf)
    chosen = [int(i) for i in labeled]

    def absorb(centre: int) -> None:
        np.minimum(nearest, norms - 2.0 * (x64 @ x64[centre]) + norms[centre], out=nearest)

    for centre in chosen:
        absorb(centre)
    picks = []
    for _ in range(k):
        nearest[chosen] = -1.0
        picks.append(int(np.argmax(nearest)))
        chosen.append(picks[-1])
        absorb(picks[-1])
    return picks


def case_reference(n: int, dim: int, k: int, initial: int) -> dict:
    """DiverseEvol's N x N approach against ours on the same data and initial set."""
    preload_torch()
    x = random_matrix(n, dim, seed=0)
    labeled = np.random.default_rng(0).choice(n, size=initial, replace=False)
    before = rss_now()
    reset_peak()
    started = time.perf_counter()
    with pinned_threads(1):  # the same one thread as ours: like for like
        reference = diverseevol_reference(x, labeled, k)
    seconds = time.perf_counter() - started
    peak = peak_since_reset()
    extra = max(0, peak - before)
    ours, stats = run_kcenter(x, k, initial=labeled)
    ours_peak = peak_since_reset()
    return {
        "n": n,
        "dim": dim,
        "k": k,
        "initial": initial,
        "nxn_seconds": round(seconds, 3),
        "nxn_extra_peak_mb": round(extra / MB, 1),
        "nxn_peak_rss_mb": round(peak / MB, 1),
        "ours": stats,
        "speedup": round(seconds / stats["seconds"], 1),
        "same_picks": reference == ours,
        "first_difference": next((i for i, (a, b) in enumerate(zip(reference, ours)) if a != b), k),
        "differ_as_set": len(set(reference) - set(ours)),
        "ours_peak_rss_mb": round(ours_peak / MB, 1),
        "ours_equal_float64_definition": ours == float64_definition(x, labeled, k),
    }


CASES = {"stream": case_stream, "reference": case_reference}


def in_child(case: str, params: dict) -> dict:
    """Run one case in a fresh process so its peak RSS is not another case's."""
    command = [sys.executable, __file__, "--child", case, json.dumps(params)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a quick check")
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--k", type=int, default=1_000)
    parser.add_argument("--n-large", type=int, default=1_000_000)
    parser.add_argument("--k-large", type=int, default=200)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--ref-n", type=int, default=20_000)
    parser.add_argument("--ref-k", type=int, default=1_000)
    parser.add_argument("--half-compare", type=int, default=1_000)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        case, params = args.child
        print(json.dumps(CASES[case](**json.loads(params))))
        return
    if args.quick:
        args.n, args.k, args.n_large, args.k_large = 20_000, 100, 50_000, 20
        args.ref_n, args.ref_k, args.half_compare = 2_000, 100, 100
    started = time.perf_counter()
    results = {
        "bench": "kcenter",
        "quick": args.quick,
        "medium": in_child(
            "stream",
            {
                "n": args.n,
                "dim": args.dim,
                "k": args.k,
                "memmap": False,
                "half_compare": args.half_compare,
            },
        ),  # fmt: skip
        "large_memmap": in_child(
            "stream",
            {
                "n": args.n_large,
                "dim": args.dim,
                "k": args.k_large,
                "memmap": True,
                "half_compare": 0,
            },
        ),  # fmt: skip
        "diverseevol_nxn": in_child(
            "reference", {"n": args.ref_n, "dim": args.dim, "k": args.ref_k, "initial": 100}
        ),
    }
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
