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


def alternating_medians(contenders: dict, rounds: int = 5) -> dict:
    """Median wall time of each contender over ``rounds`` rounds that call every contender once,
    in turn (after one warm-up call each): a ratio between two of them then sees the same drift
    of a shared, noisy machine."""
    for fn in contenders.values():
        fn()
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
