"""Latency and peak memory of a callable on CPU, as ``qgnn eval`` and ``benchmarks/export.py`` report them.

* latency: the median of ``repeats`` timed calls after ``warmup`` untimed ones (``time.perf_counter``);
* peak memory: the largest resident set size (RSS, ``/proc/self/statm``) sampled every ~0.2 ms by a thread
  while the calls run, minus the RSS just before them: the extra memory the calls needed (the median over
  several calls where one is short). torch ops release
  the GIL, so the sampler runs during them. Where ``/proc`` is missing (not Linux) the process-lifetime
  ``ru_maxrss`` growth is used instead (a lower bound when an earlier peak was higher). glibc's malloc
  thresholds are fixed first so that freed buffers leave the RSS (:func:`_fix_malloc`).
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["rss_bytes", "median_latency", "peak_memory"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return None


def _maxrss() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def median_latency(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> tuple[float, list[float]]:
    """(median seconds, all timings) of ``repeats`` calls of ``fn`` after ``warmup`` calls."""
    for _ in range(max(warmup, 0)):
        fn()
    times = []
    for _ in range(max(repeats, 1)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _fix_malloc() -> None:
    """Make glibc return freed large blocks to the OS at once (fixed mmap / trim thresholds of 128 KiB).

    Why: glibc raises its mmap threshold after a large block is freed and then keeps such blocks on the
    heap, so a second call of the same function reuses them and shows no RSS growth at all. With the
    thresholds fixed, RSS follows the live large buffers. Call it after timing: page faults on fresh
    mappings make later allocations slower. No-op where glibc is not the allocator."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory(fn: Callable[[], object], repeats: int = 1) -> int:
    """Peak extra bytes of RSS while ``fn()`` runs (module docstring); ``repeats`` > 1: the median over that many
    calls (a pass of a few milliseconds allocates under a megabyte, and one sample of it varies by a third
    with where the allocator finds its blocks). Fixes glibc's thresholds first (:func:`_fix_malloc`), so
    measure latency before memory."""
    if repeats > 1:
        return int(statistics.median(peak_memory(fn) for _ in range(repeats)))
    _fix_malloc()
    base = rss_bytes()
    if base is None:
        before = _maxrss()
        fn()
        return max(_maxrss() - before, 0)
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            r = rss_bytes()
            if r is not None and r > peak[0]:
                peak[0] = r
            time.sleep(0.0002)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        stop.set()
        t.join()
    r = rss_bytes()
    return max(max(peak[0], r or 0) - base, 0)
