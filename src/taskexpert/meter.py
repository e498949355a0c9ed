"""Wall time and peak memory of a block, for the run manifest: what a method cost to train.

`with measure() as m: ...` then `m.seconds`, `m.peak_rss_mb`, `m.cuda_peak_mb`. A daemon
thread samples the process's resident memory every `interval` seconds; on exit the kernel's
lifetime peak (ru_maxrss) is used too when it rose during the block, so a spike shorter
than one interval is not missed. GPU memory is read only when torch is already imported and
sees CUDA: measuring never imports torch.
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from pathlib import Path

MB = 1024 * 1024


def _rss_bytes() -> int | None:
    """The process's current resident set size: psutil when installed, else /proc."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.Process().memory_info().rss)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _max_rss_bytes() -> int:
    """The kernel's lifetime peak RSS of this process (kilobytes on Linux, bytes on macOS)."""
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value if sys.platform == "darwin" else value * 1024)


def _cuda():
    """torch.cuda when torch is already imported and has a GPU, else None."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return torch.cuda if torch.cuda.is_available() else None
    except Exception:  # a broken CUDA setup must not break the measured run
        return None


class Meter:
    """Context manager measuring seconds, peak RSS and peak CUDA memory of its block."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.seconds: float = 0.0
        self.start_rss_mb: float | None = None
        self.peak_rss_mb: float | None = None
        self.cuda_peak_mb: float | None = None
        self._peak_rss = 0
        self._peak_cuda = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        rss = _rss_bytes()
        if rss is not None:
            self._peak_rss = max(self._peak_rss, rss)
        if self._cuda is not None:
            self._peak_cuda = max(self._peak_cuda, int(self._cuda.memory_allocated()))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Meter:
        self._cuda = _cuda()
        self._max_rss_before = _max_rss_bytes()
        self._cuda_max_before = int(self._cuda.max_memory_allocated()) if self._cuda else 0
        start = _rss_bytes()
        self.start_rss_mb = None if start is None else start / MB
        self._sample()
        self._thread = threading.Thread(target=self._run, name="taskexpert-meter", daemon=True)
        self._began = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._began
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        peak = self._peak_rss
        max_rss = _max_rss_bytes()
        if max_rss > self._max_rss_before:  # the lifetime peak was reached inside the block
            peak = max(peak, max_rss)
        self.peak_rss_mb = peak / MB if peak else None
        if self._cuda is not None:
            cuda_peak = self._peak_cuda
            cuda_max = int(self._cuda.max_memory_allocated())
            if cuda_max > self._cuda_max_before:
                cuda_peak = max(cuda_peak, cuda_max)
            self.cuda_peak_mb = cuda_peak / MB

    def as_dict(self) -> dict:
        """The measurements for the manifest (MB rounded to 0.1, seconds to 1 ms)."""

        def mb(value: float | None) -> float | None:
            return None if value is None else round(value, 1)

        return {
            "seconds": round(self.seconds, 3),
            "start_rss_mb": mb(self.start_rss_mb),
            "peak_rss_mb": mb(self.peak_rss_mb),
            "cuda_peak_mb": mb(self.cuda_peak_mb),
        }


def measure(interval: float = 0.2) -> Meter:
    """A Meter to use as `with measure() as m:`."""
    return Meter(interval)
