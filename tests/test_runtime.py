import builtins
import io

import pytest
import torch
from threadpoolctl import threadpool_info

from taskexpert import runtime


def _blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info()}


def test_pinned_threads_sets_torch_and_blas_and_restores_both():
    before_torch, before_blas = torch.get_num_threads(), _blas_threads()
    target = 1 if before_torch != 1 else 2
    with runtime.pinned_threads(target):
        assert torch.get_num_threads() == target
        assert _blas_threads() <= {target}
    assert torch.get_num_threads() == before_torch and _blas_threads() == before_blas


def test_pinned_threads_restores_after_an_error_and_none_changes_nothing():
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with pytest.raises(RuntimeError), runtime.pinned_threads(target, blas=False):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with runtime.pinned_threads(None):
        assert torch.get_num_threads() == before


def test_idle_cores_reads_proc_stat_and_gives_none_where_it_cannot(monkeypatch):
    samples = iter(["cpu  100 0 100 800 0 0 0 0\n", "cpu  150 0 150 1500 200 0 0 0\n"])
    real_open = builtins.open
    monkeypatch.setattr(
        builtins,
        "open",
        lambda p, *a, **k: (
            io.StringIO(next(samples)) if p == "/proc/stat" else real_open(p, *a, **k)
        ),
    )
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 4)
    # 900 of 1000 jiffies idle or waiting on 4 cores
    assert runtime.idle_cores(window=0) == pytest.approx(3.6)

    def refuse(*_a, **_k):
        raise OSError("no /proc here")

    monkeypatch.setattr(builtins, "open", refuse)
    assert runtime.idle_cores(window=0) is None


@pytest.mark.parametrize(
    ("idle", "load", "expected"),
    [(3.6, None, 4), (3.4, None, 1), (None, 0.2, 4), (None, 2.0, 1), (None, "missing", 4)],
)
def test_auto_threads_every_core_when_quiet_one_when_busy(monkeypatch, idle, load, expected):
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(runtime, "idle_cores", lambda window=0.5: idle)

    def loadavg():
        if load == "missing":
            raise OSError
        return (load, load, load)

    monkeypatch.setattr(runtime.os, "getloadavg", loadavg)
    assert runtime.auto_threads() == expected


def test_auto_threads_asks_again_on_every_call(monkeypatch):
    answers = iter([2.0, 0.0])
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(runtime, "idle_cores", lambda window=0.5: next(answers))
    assert [runtime.auto_threads(), runtime.auto_threads()] == [2, 1]


def test_resolve_device(monkeypatch):
    assert runtime.resolve_device("cpu") == "cpu" and runtime.resolve_device("cuda:1") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.resolve_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert runtime.resolve_device("auto") == "mps"


def test_native_bf16_reads_the_cpu_flags(monkeypatch):
    real_open = builtins.open

    def cpuinfo(flags):
        text = f"processor\t: 0\nflags\t\t: {flags}\n"
        return lambda p, *a, **k: (
            io.StringIO(text) if p == "/proc/cpuinfo" else real_open(p, *a, **k)
        )

    monkeypatch.setattr(builtins, "open", cpuinfo("fpu sse avx2 avx512f avx512_bf16"))
    assert runtime.native_bf16("cpu") and runtime.native_bf16(torch.device("cpu"))
    monkeypatch.setattr(builtins, "open", cpuinfo("fpu sse avx2 amx_bf16"))
    assert runtime.native_bf16()
    monkeypatch.setattr(builtins, "open", cpuinfo("fpu sse avx2 avx512f"))
    assert not runtime.native_bf16("cpu")
    assert not runtime.native_bf16("mps")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert runtime.native_bf16("cuda")


def test_the_governor_follows_other_processes_load_and_not_its_own(monkeypatch):
    """Issue 20: the thread count follows the load while a loop runs. Its own busy threads
    must not count as load, or a quiet machine would look busy and drop it to one thread."""
    now = {"t": 0.0, "own": 0.0, "jiffies": (0, 0)}
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(runtime, "auto_threads", lambda: 1)  # busy as the loop starts
    monkeypatch.setattr(runtime.time, "process_time", lambda: now["own"])
    monkeypatch.setattr(runtime, "_cpu_jiffies", lambda: now["jiffies"])
    governor = runtime.ThreadGovernor(interval=20.0, clock=lambda: now["t"])
    before = torch.get_num_threads()
    try:
        governor.start()
        assert governor.threads == 1 and torch.get_num_threads() == 1

        def advance(seconds, own_cores, busy_cores):
            now["t"] += seconds
            now["own"] += own_cores * seconds
            total, busy = now["jiffies"]
            now["jiffies"] = (total + 200 * seconds, busy + 100 * busy_cores * seconds)
            governor.check()

        advance(10, own_cores=1.0, busy_cores=1.0)  # inside the interval: nothing measured
        assert governor.threads == 1
        advance(15, own_cores=1.0, busy_cores=1.0)  # only our own thread keeps a core busy
        assert governor.threads == 2 and torch.get_num_threads() == 2
        advance(25, own_cores=2.0, busy_cores=2.0)  # both cores ours: still quiet
        assert governor.threads == 2
        advance(25, own_cores=1.0, busy_cores=2.0)  # another job took a core
        assert governor.threads == 1 and torch.get_num_threads() == 1
        assert governor.changes == [(0.0, 1), (25.0, 2), (75.0, 1)]
    finally:
        torch.set_num_threads(before)


def test_follow_load_acts_only_inside_an_adaptive_block(monkeypatch):
    checks = []
    monkeypatch.setattr(runtime.ThreadGovernor, "check", lambda self: checks.append(self))
    monkeypatch.setattr(runtime, "auto_threads", lambda: 1)
    before = torch.get_num_threads()
    runtime.follow_load()
    assert checks == []
    with runtime.adaptive_threads() as governor:
        runtime.follow_load()
        assert torch.get_num_threads() == 1
    runtime.follow_load()
    assert checks == [governor] and torch.get_num_threads() == before
