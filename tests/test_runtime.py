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
