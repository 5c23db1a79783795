"""benchmarks/runtime.py's bookkeeping: the medians of the small-graph rounds."""

from __future__ import annotations

from qgnn_bench_testutil import load_script


def _run(lat, fp32_lat, peak, fp32_peak):
    return {"latency_ms": lat, "peak_memory_bytes": peak, "accuracy": 0.8, "speedup": fp32_lat / lat,
            "fp32": {"latency_ms": fp32_lat, "peak_memory_bytes": fp32_peak, "accuracy": 0.81}}


def test_small_rounds_report_each_sides_medians():
    # each side's medians over the rounds; the ratios are the medians of each round's own ratio (both sides of a
    # round ran in one process), not the ratios of the medians (3.0 / 3.0 = 1.0 here, mixing processes)
    rt = load_script("runtime")
    runs = [_run(2.0, 3.0, 100, 90), _run(4.0, 2.0, 300, 60), _run(3.0, 3.6, 200, 80)]
    r = rt.median_rounds(runs)
    assert r["latency_ms"] == 3.0 and r["fp32"]["latency_ms"] == 3.0
    assert abs(r["speedup"] - 1.2) < 1e-12  # rounds: 1.5, 0.5, 1.2
    assert r["peak_memory_bytes"] == 200 and r["fp32"]["peak_memory_bytes"] == 80
    assert r["memory_ratio"] == 2.5  # rounds: 1.11, 5.0, 2.5
    assert rt.round_ratios(r["rounds"]) == {"speedup": r["speedup"], "memory_ratio": r["memory_ratio"]}
    assert [x["latency_ms"] for x in r["rounds"]] == [2.0, 4.0, 3.0]
    assert runs[0]["fp32"]["latency_ms"] == 3.0 and runs[0]["latency_ms"] == 2.0  # the inputs are not changed
    assert r["accuracy"] == 0.8 and r["fp32"]["accuracy"] == 0.81
