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


def alternating_times(contenders: dict, rounds: int = 5) -> dict:
    """Wall times of each contender over ``rounds`` rounds that call every contender once, in
    turn (after one warm-up call each): two contenders' times of one round see the same drift of
    a shared, noisy machine."""
    for fn in contenders.values():
        fn()
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def alternating_medians(contenders: dict, rounds: int = 5) -> dict:
    """Median wall time of each contender over alternating rounds (``alternating_times``)."""
    return {name: statistics.median(values) for name, values in alternating_times(contenders, rounds).items()}


def paired_ratio(times: dict, numerator: str, denominator: str) -> float:
    """Median over rounds of numerator's time / denominator's time in the same round: steadier
    than a ratio of medians when the machine's speed drifts between rounds."""
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator]))
