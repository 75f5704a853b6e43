"""Wall-clock timing shared by the end-to-end benchmarks (pytest-benchmark times the main contender)."""

from __future__ import annotations

import statistics
import time


def median_seconds(fn, rounds: int = 3) -> float:
    """Median wall time of ``rounds`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
