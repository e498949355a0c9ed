import sys
import time

import numpy as np
import pytest

from taskexpert import meter
from taskexpert.meter import Meter, measure


def _hold_200mb(seconds: float = 0.5) -> None:
    block = np.ones(200 * 1024 * 1024 // 8)  # ones, not zeros: the pages must be touched
    time.sleep(seconds)
    del block


@pytest.mark.parametrize("psutil_installed", [True, False])
def test_peak_rss_sees_a_200mb_array_and_seconds_cover_the_block(monkeypatch, psutil_installed):
    if not psutil_installed:
        monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil -> ImportError
    with measure(interval=0.05) as m:
        _hold_200mb()
    assert m.seconds >= 0.5
    assert m.peak_rss_mb - m.start_rss_mb >= 150
    record = m.as_dict()
    assert set(record) == {"seconds", "start_rss_mb", "peak_rss_mb", "cuda_peak_mb"}
    assert record["seconds"] >= 0.5 and record["peak_rss_mb"] >= 150


def test_a_quiet_block_adds_little():
    with measure() as m:
        time.sleep(0.25)
    assert 0.25 <= m.seconds < 5
    assert m.peak_rss_mb - m.start_rss_mb < 50


def test_no_cuda_means_none_and_torch_is_not_imported(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    with measure() as m:
        pass
    assert m.cuda_peak_mb is None and m.as_dict()["cuda_peak_mb"] is None
    assert "torch" not in sys.modules


def test_cuda_peak_comes_from_torch_when_it_has_a_gpu(monkeypatch):
    class FakeCuda:
        def __init__(self):
            self.allocated, self.max = 10 * meter.MB, 100 * meter.MB

        def memory_allocated(self):
            return self.allocated

        def max_memory_allocated(self):
            return self.max

    fake = FakeCuda()
    monkeypatch.setattr(meter, "_cuda", lambda: fake)
    with Meter() as m:
        fake.allocated = 50 * meter.MB  # sampled on exit
    assert m.cuda_peak_mb == pytest.approx(50, abs=1e-9)
    with Meter() as m:
        fake.max = 300 * meter.MB  # a peak between samples, seen through max_memory_allocated
    assert m.cuda_peak_mb == pytest.approx(300, abs=1e-9)
