"""Start the CLI on one process or, as a user would with `accelerate launch`, on two
(gloo on the CPU), for the tests that check several processes train what one does."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ONE = [sys.executable]
# the documented two-process config, so the test exercises what the docs tell users to run
MULTI_CPU = Path(__file__).parents[1] / "examples" / "accelerate" / "multi_cpu.yaml"
TWO = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(MULTI_CPU)]
WEIGHT_TOLERANCE = 1e-5  # float32 gradients summed in another order may differ in the last bits


def taskexpert(launcher: Sequence[str], *args: object) -> subprocess.CompletedProcess:
    """`python -m taskexpert ARGS` under `launcher`; fails the test with its stderr's tail."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_DISABLE_RICH": "1"}
    done = subprocess.run(
        [*launcher, "-m", "taskexpert", *map(str, args)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def max_difference(a: dict, b: dict) -> float:
    """Largest absolute difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)
