"""``steer generate`` on the demo models: --share-negatives K against K = 1 and plain sampling.

    python -m pytest benchmarks/test_bench_share_negatives.py -s

Each contender is one whole ``steer generate`` run (200 samples, 48 new tokens at most, seed 0,
the defaults otherwise, at --batch-size 16, the default, and 32) with the models already loaded, a fresh engine per run (so no run finds
another's prefix cache), timed from planning to the last record written. The contenders run in
alternating rounds (a shared, noisy host drifts in ~1 s phases): the ratios are medians of each
round's own ratios. The ratios this is about: K = 1 over K = 16 (target >= 2x) and K = 16 over
plain sampling (target <= 1.5x, moonshot 1.2x); and --per-example-kv (each example's KV computed
once and copied into the joined contexts, an approximation) at K = 1 and 16 against the same.
Also printed: the share of negative-context (and per-example chunk) tokens found in the prefix
cache, per contender.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from timing import paired_ratio

N, MAX_NEW = 200, 48
SETTINGS = {
    "plain": dict(gamma=0.0, eta=0.0, num_negatives=0),
    "K=1": dict(share_negatives=1),
    "K=4": dict(share_negatives=4),
    "K=16": dict(share_negatives=16),
    "K=64": dict(share_negatives=64),
    "separate K=1": dict(negative_mode="separate", share_negatives=1),
    "separate K=16": dict(negative_mode="separate", share_negatives=16),
    "per-example K=1": dict(per_example_kv=True, share_negatives=1),
    "per-example K=16": dict(per_example_kv=True, share_negatives=16),
}
BATCH_SIZES = (16, 32)
CONTENDERS = {f"{name} b{batch}": (settings, batch) for batch in BATCH_SIZES for name, settings in SETTINGS.items()}
ROUNDS = 3


def make_run(tmp_path, name: str, settings: dict, batch_size: int, models_cache: dict):
    from steer.config import SteerConfig
    from steer.data.generate import GenerateRequest, build_engine, plan_generation, run_generation
    from steer.data.models import load_models
    from steer.demo.models import demo_base_dir, demo_expert_dir, demo_real_examples

    real = demo_real_examples()
    counter = iter(range(10**6))

    def once() -> dict:
        out = tmp_path / f"{name.replace(' ', '_').replace('=', '')}-{next(counter)}.jsonl"
        config = SteerConfig(**{"top_k": 10, "max_new_tokens": MAX_NEW, "seed": 0, **settings})
        request = GenerateRequest(real_texts=real, real_name="pyjokes", expert=str(demo_expert_dir()),
                                  base=str(demo_base_dir()), prompt="", n=N, out=out, config=config, quiet=True,
                                  batch_size=batch_size)  # fmt: skip
        start = time.perf_counter()
        plan = plan_generation(request)
        if "models" not in models_cache:
            models_cache["models"] = load_models(plan.sources, dtype=torch.float32)
            start = time.perf_counter()  # loading the models once is not any contender's time
            plan = plan_generation(request)
        engine = build_engine(plan, models_cache["models"])
        summary = run_generation(plan, engine)
        return {"seconds": time.perf_counter() - start, "hit": summary.negative_cache_hit, "tokens": summary.tokens,
                "steps": engine.step_stats.as_dict(), "chunk_hit": summary.chunk_cache_hit}

    return once


@pytest.mark.benchmark(group="share-negatives")
def test_share_negatives_vs_one_draw_per_sample_and_plain(benchmark, tmp_path):
    from steer.engine.scheduler import describe_steps

    models: dict = {}
    runs = {name: make_run(tmp_path, name, settings, batch, models) for name, (settings, batch) in CONTENDERS.items()}
    for run in runs.values():  # warm-up: first loads, first allocations
        run()
    times = {name: [] for name in runs}
    hits, tokens, steps, chunk_hits = {}, {}, {}, {}
    for _ in range(ROUNDS):
        for name, run in runs.items():
            result = run()
            times[name].append(result["seconds"])
            hits[name], tokens[name], steps[name] = result["hit"], result["tokens"], result["steps"]
            chunk_hits[name] = result["chunk_hit"]
    benchmark.pedantic(lambda: None, rounds=1)
    print(f"\nsteer generate --n {N} --max-new-tokens {MAX_NEW} on the demo models, {ROUNDS} alternating rounds "
          "(models loaded once; a fresh engine per run)")  # fmt: skip
    for name, values in times.items():
        hit = "" if hits[name] is None else f"  negative tokens cached: {100 * hits[name]:.0f}%"
        hit += "" if chunk_hits[name] is None else f", chunk tokens cached: {100 * chunk_hits[name]:.0f}%"
        print(f"  {name:<18} median {statistics.median(values):5.2f} s  {[round(v, 2) for v in values]}  "
              f"{tokens[name]} tokens{hit}")  # fmt: skip
        print("  " + " " * 18 + f" steps: {describe_steps(steps[name])}")
    ratios = {}
    for b in BATCH_SIZES:
        ratios.update({
            f"b{b}: K=1 / K=16 (target >= 2x)": paired_ratio(times, f"K=1 b{b}", f"K=16 b{b}"),
            f"b{b}: K=16 / plain (target <= 1.5x)": paired_ratio(times, f"K=16 b{b}", f"plain b{b}"),
            f"b{b}: K=1 / plain": paired_ratio(times, f"K=1 b{b}", f"plain b{b}"),
            f"b{b}: K=64 / plain": paired_ratio(times, f"K=64 b{b}", f"plain b{b}"),
            f"b{b}: separate K=1 / separate K=16": paired_ratio(times, f"separate K=1 b{b}", f"separate K=16 b{b}"),
            f"b{b}: K=1 / per-example K=1": paired_ratio(times, f"K=1 b{b}", f"per-example K=1 b{b}"),
            f"b{b}: per-example K=1 / plain": paired_ratio(times, f"per-example K=1 b{b}", f"plain b{b}"),
            f"b{b}: K=1 / per-example K=16": paired_ratio(times, f"K=1 b{b}", f"per-example K=16 b{b}"),
            f"b{b}: per-example K=16 / plain": paired_ratio(times, f"per-example K=16 b{b}", f"plain b{b}"),
        })  # fmt: skip
    for label, value in ratios.items():
        print(f"  [share-negatives] {label}: {value:.2f}x")
        benchmark.extra_info[label] = value
