"""qgnn.export.measure: latency and peak memory as `qgnn eval` reports them."""

from __future__ import annotations

import pytest
import torch

from qgnn.export.evaluate import peak_passes
from qgnn.export.measure import median_latency, peak_memory, rss_bytes

needs_proc = pytest.mark.skipif(rss_bytes() is None, reason="no /proc/self/statm here")


def test_median_latency_counts_its_calls():
    calls = []
    med, times = median_latency(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7 and len(times) == 5 and med == sorted(times)[2]


@needs_proc
@pytest.mark.parametrize("repeats", [1, 3])
def test_peak_memory_sees_a_large_buffer(repeats):
    # 64 MiB touched while the call runs: the RSS growth is at least most of it, and it is freed after
    calls = []

    def fn():
        calls.append(1)
        t = torch.ones(16 * 2**20)
        return float(t[-1])

    peak = peak_memory(fn, repeats)
    assert len(calls) == repeats
    assert 48 * 2**20 <= peak <= 96 * 2**20


def test_peak_passes_shrink_with_the_pass_time():
    assert [peak_passes(t) for t in (0.001, 0.2, 0.3, 0.6, 1.0, 30.0)] == [5, 5, 3, 1, 1, 1]
