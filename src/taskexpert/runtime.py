"""Where the code runs: thread counts, idle cores, the device and whether bf16 is native.

One implementation of each, for every verb. Threads matter more than they look on a shared
CPU: a K-center pass with two threads on two busy cores stalled by up to 80x, LM embedding by
up to 20x, while on a quiet machine two threads train the testbed 1.3-1.5x faster than one
(docs/design.md, "Measured on this machine"). Hence explicit pinning everywhere and
`auto_threads` where nobody chose a count.

torch is imported lazily, so `pinned_threads(..., import_torch=False)` stays cheap for
numpy-only callers.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar


def cpu_count() -> int:
    """Logical cores of the machine (at least 1); what /proc/stat's totals are spread over."""
    return os.cpu_count() or 1


@contextlib.contextmanager
def pinned_threads(
    count: int | None, *, blas: bool = True, import_torch: bool = True
) -> Iterator[None]:
    """Run the block with `count` torch intra-op threads and, with `blas`, `count` BLAS/OpenMP
    threads (threadpoolctl); both are restored afterwards. None leaves everything as it is.

    `import_torch=False` pins torch only if something already imported it (numpy-only paths
    need not pay torch's import); torch widens float16 for K-center, so those callers ask.
    """
    if count is None:
        yield
        return
    torch = importlib.import_module("torch") if import_torch else sys.modules.get("torch")
    if blas:
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(limits=count)
    else:
        limits = contextlib.nullcontext()
    before = torch.get_num_threads() if torch else 0
    with limits:
        if torch:
            torch.set_num_threads(count)
        try:
            yield
        finally:
            if torch:
                torch.set_num_threads(before)


def pin_process_threads(count: int) -> None:
    """Set torch's intra-op threads for the rest of this process (worker processes and Ray
    actors, which live for one job: nothing to restore)."""
    import torch

    torch.set_num_threads(count)


def idle_cores(window: float = 0.5) -> float | None:
    """Cores left idle over a short window (from /proc/stat), None where it cannot be read.

    The load average lags by a minute, so right after other jobs finish it still says busy.
    """

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return cpu_count() * (idle1 - idle0) / max(total1 - total0, 1)


def threads_for(others: float, cores: int | None = None) -> int:
    """Every core when other work holds less than half a core, else one.

    Measured on the testbed's standard model: two threads train 1.3-1.5x faster than one on a
    quiet 2-core machine, but about 3x slower than one while other jobs hold the cores."""
    cores = cores or cpu_count()
    return cores if others < 0.5 else 1


def auto_threads() -> int:
    """`threads_for` the load right now (a probe of about half a second). The answer holds for
    now only: long loops follow the load with `adaptive_threads`."""
    cores = cpu_count()
    idle = idle_cores()
    if idle is None:
        try:
            idle = cores - os.getloadavg()[0]
        except (AttributeError, OSError):  # no load figures on this platform
            return cores
    return threads_for(cores - idle, cores)


def _cpu_jiffies() -> tuple[int, int] | None:
    """(total, busy) jiffies of the whole machine since boot, None where /proc/stat is absent."""
    try:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    return sum(values), sum(values) - values[3] - values[4]


class ThreadGovernor:
    """Follows the machine's load during one long loop: every `interval` seconds it measures
    the cores other processes used since the last look (the machine's busy time less this
    process's own CPU time, so its own threads never count as load) and re-pins torch with
    `threads_for`. It never sleeps to measure, so a check costs two small reads.

    Why (issue 20): a build that picked one thread on a busy machine kept it for 50 minutes
    after the machine went quiet; one that picks every core keeps fighting a job that starts."""

    def __init__(self, interval: float = 20.0, clock=time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self.changes: list[tuple[float, int]] = []  # (seconds into the loop, threads from then)
        self._began = clock()
        self._last: tuple[float, float, tuple[int, int] | None] | None = None

    @property
    def threads(self) -> int:
        return self.changes[-1][1]

    def _set(self, count: int) -> None:
        import torch

        if not self.changes or count != self.threads:
            torch.set_num_threads(count)
            self.changes.append((round(self._clock() - self._began, 1), count))

    def start(self) -> None:
        self._set(auto_threads())
        self._last = (self._clock(), time.process_time(), _cpu_jiffies())

    def check(self) -> None:
        """Re-pin if `interval` seconds passed since the last look; cheap to call every step."""
        now = self._clock()
        if self._last is None or now - self._last[0] < self.interval:
            return
        then, own_then, jiffies_then = self._last
        own_now, jiffies_now = time.process_time(), _cpu_jiffies()
        self._last = (now, own_now, jiffies_now)
        if jiffies_then is None or jiffies_now is None:
            return
        total, busy = (b - a for a, b in zip(jiffies_then, jiffies_now, strict=True))
        busy_cores = cpu_count() * busy / max(total, 1)
        own_cores = (own_now - own_then) / max(now - then, 1e-9)
        self._set(threads_for(max(0.0, busy_cores - own_cores)))


_GOVERNOR: ContextVar[ThreadGovernor | None] = ContextVar("thread_governor", default=None)


@contextlib.contextmanager
def adaptive_threads(interval: float = 20.0) -> Iterator[ThreadGovernor]:
    """Within the block, `follow_load()` (which long loops call every step) re-pins torch's
    threads to the load; torch's count is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    governor = ThreadGovernor(interval)
    governor.start()
    token = _GOVERNOR.set(governor)
    try:
        yield governor
    finally:
        _GOVERNOR.reset(token)
        torch.set_num_threads(before)


def follow_load() -> None:
    """Let the active `adaptive_threads` block re-pin threads; a no-op outside one."""
    governor = _GOVERNOR.get()
    if governor is not None:
        governor.check()


# The variables launchers set for a process's rank and the group's size (torchrun and
# `accelerate launch` set RANK/WORLD_SIZE; MPI launchers their own), as accelerate reads them.
RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMI_RANK")
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMI_SIZE")


def _first_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
    return default


def world_size() -> int:
    """Processes training together (1 unless started by a launcher such as
    `accelerate launch` or torchrun); read from the environment, so nothing starts up."""
    return max(1, _first_int(WORLD_SIZE_VARIABLES, 1))


def is_main_process() -> bool:
    """Whether this process writes the results: rank 0, or the only process. The other ranks
    train in step with it and write nothing, so no two processes race on one file."""
    return _first_int(RANK_VARIABLES, 0) == 0


# How long a process waits on the others (rank 0 may embed a whole pool between two rounds)
PROCESS_GROUP_TIMEOUT_HOURS = 24


def share_from_main(value: object = None) -> object:
    """Rank 0's `value` on every process (with one process, `value` itself).

    Why: under `accelerate launch` only rank 0 selects data and writes the run; the others
    learn from it what to train next, then train in step with it."""
    if world_size() == 1:
        return value
    from datetime import timedelta

    import torch.distributed as dist
    from accelerate import PartialState

    # joins the group once; as `train` does, the CPU (gloo) unless CUDA is here
    PartialState(
        cpu=resolve_device() != "cuda", timeout=timedelta(hours=PROCESS_GROUP_TIMEOUT_HOURS)
    )
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def resolve_device(device: str = "auto") -> str:
    """`device` as given, or for "auto" the best one here: cuda, then mps, then cpu."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def native_bf16(device: object = "cpu") -> bool:
    """Whether bf16 matmuls run natively on `device` (a torch.device or its name): emulated
    ones are slower than fp32, so bf16 autocast is only worth it where this is true."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:  # Linux: the CPU flags; elsewhere assume not (Apple silicon runs fp32 faster on CPU)
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
