"""Data shipped with the package: a small real sample so the demo runs without ../shared/data.

`SAMPLE_POOL` holds about 2,000 canonical open-pool records (FLAN v2 CoT, T0, Self-Instruct,
Code Alpaca), `SAMPLE_KSHOT` 20 GSM8K train records with rationales; both load with
`taskexpert.records.load_records`. `python -m taskexpert.data.make_sample DATA_DIR` rebuilds them.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).parent / "sample"
SAMPLE_POOL = SAMPLE_DIR / "pool.jsonl"
SAMPLE_KSHOT = SAMPLE_DIR / "gsm8k_kshot.jsonl"
