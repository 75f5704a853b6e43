"""``steer generate`` on the demo models: STEER's generation time against plain sampling's.

    python -m pytest benchmarks/test_bench_generate.py -s

Both runs are the command line as a user runs it (the bundled demo models and jokes, 200 samples,
the same seed): once with the defaults (gamma 0.2, eta 0.2, 5 negative examples in one concat
stream), once with ``--gamma 0 --eta 0`` (plain sampling from the expert). The time is the
generation time steer reports (models loaded, output written), side by side in one run, plain
first and STEER second, then again in the other order; the ratio is STEER's over plain's.

The STEER run also times the engine's attention (``PagedAttention.__call__``: the KV write and
the paged attention op) and prints its share of the generation time, and the share of the
engine's step spent in each part (the forward, the sampler, the scheduler).
"""

from __future__ import annotations

import re
import time

import pytest

from steer.cli import main

N = 200
PLAIN = ["--gamma", "0", "--eta", "0"]
SUMMARY = re.compile(r"(\d+) new in ([0-9.]+) s")


def generation_seconds(tmp_path, capsys, name: str, extra: list[str]) -> float:
    out = tmp_path / f"{name}.jsonl"
    assert main(["generate", "--n", str(N), "--out", str(out), "--seed", "0", *extra]) == 0
    printed = capsys.readouterr()
    match = SUMMARY.search(printed.out + printed.err)
    assert match and int(match.group(1)) == N, printed
    return float(match.group(2))


class Timer:
    """Wraps a callable, adding up the seconds spent inside it."""

    def __init__(self, function) -> None:
        self.function, self.seconds, self.calls = function, 0.0, 0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


@pytest.mark.benchmark(group="generate")
def test_steer_generation_time_vs_plain_sampling(tmp_path, capsys, monkeypatch):
    from steer.engine import attention, engine, model_runner, scheduler

    times = {"plain": [], "steer": []}
    for order in (("plain", "steer"), ("steer", "plain")):
        for name in order:
            times[name].append(generation_seconds(tmp_path / f"{len(times[name])}", capsys, name, PLAIN if name == "plain" else []))
    plain, steer = min(times["plain"]), min(times["steer"])

    parts = {
        "attention": (attention.PagedAttention, "__call__"),
        "forward (incl. attention)": (model_runner.ModelRunner, "run"),
        "sampler": (engine.SteerEngine, "_sample"),
        "schedule": (scheduler.Scheduler, "schedule"),
        "postprocess": (scheduler.Scheduler, "postprocess"),
    }
    timers = {}
    for name, (owner, attribute) in parts.items():
        timers[name] = Timer(getattr(owner, attribute))
        monkeypatch.setattr(owner, attribute, lambda *a, _t=timers[name], **k: _t(*a, **k))
    profiled = generation_seconds(tmp_path / "profiled", capsys, "steer", [])
    monkeypatch.undo()

    print(f"\nsteer generate --n {N} on the demo models (best of 2, alternating order)")
    print(f"  plain sampling (--gamma 0 --eta 0): {plain:.2f} s  {times['plain']}")
    print(f"  STEER (defaults):                   {steer:.2f} s  {times['steer']}")
    print(f"  STEER / plain: {steer / plain:.2f}x (target <= 3x, moonshot 2x)")
    print(f"  where a STEER run's time goes ({profiled:.2f} s of generation, timed run):")
    for name, timer in timers.items():
        print(f"    {name:28s} {timer.seconds:6.2f} s  {100 * timer.seconds / profiled:5.1f}%  ({timer.calls} calls)")
    assert steer > 0 and plain > 0
