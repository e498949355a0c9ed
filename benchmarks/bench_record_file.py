"""Memory and time of a DiverseEvol pool held as records (load_records) or as line offsets
(record_file.RecordFile): what a round's reads cost when the records stay on disk.

Each way runs in a fresh process (so one's heap does not hide the other's): peak RSS above
the interpreter with taskexpert imported, the time to open (validate) the file, to read 1,000
seeded random rows (a round's training subset), and to walk every record (an embedding pass).

    .venv/bin/python benchmarks/bench_record_file.py --pool runs/real/pool.jsonl

Prints one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

WAYS = ("load_records", "RecordFile")


def measure(way: str, pool: Path, rows: int) -> dict:
    import random

    from taskexpert.record_file import RecordFile, take
    from taskexpert.records import load_records

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    records = load_records(pool) if way == "load_records" else RecordFile(pool)
    opened = time.perf_counter() - start
    picks = random.Random(0).sample(range(len(records)), min(rows, len(records)))
    start = time.perf_counter()
    subset = take(records, picks)
    read = time.perf_counter() - start
    start = time.perf_counter()
    chars = sum(len(r.instruction) + len(r.output) for r in records)
    walked = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "records": len(records),
        "peak_rss_mb_above_import": round((peak - before) / 1024, 1),
        "open_s": round(opened, 2),
        "read_rows_s": round(read, 3),
        "walk_s": round(walked, 2),
        "checksum": [r.id for r in subset[:3]] + [chars],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.way:
        print(json.dumps(measure(args.way, args.pool, args.rows)))
        return
    results = {}
    for way in WAYS:
        command = [sys.executable, __file__, "--pool", str(args.pool), "--rows", str(args.rows)]
        done = subprocess.run([*command, "--way", way], capture_output=True, text=True, check=True)
        results[way] = json.loads(done.stdout)
    same = results["load_records"]["checksum"] == results["RecordFile"]["checksum"]
    print(json.dumps({"benchmark": "record_file", "pool": str(args.pool), "rows": args.rows,
                      "same_records": same, **results}))  # fmt: skip


if __name__ == "__main__":
    main()
