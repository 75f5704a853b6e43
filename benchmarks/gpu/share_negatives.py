"""``--share-negatives K`` on a GPU: ``steer generate`` on the bundled demo models with K = 1 (the
paper's draws) and K = 16 against plain sampling, the workload of the CPU benchmark
(benchmarks/test_bench_share_negatives.py) on the device.

    python benchmarks/gpu/share_negatives.py [--jsonl FILE] [--budget-s S] [--batches 16,64] [--dry-run]

Each contender is one whole generation (200 samples, 48 new tokens at most, seed 0, top-k 10, the
demo's defaults otherwise: gamma = eta = 0.2, 5 negatives joined into one ~130-token stream) with
the models loaded once (bfloat16, the CLI's choice on a GPU) and a fresh engine per run, timed
from planning to the last record written. Contenders alternate (a warm-up round, then up to 3
timed rounds while the budget lasts); each ratio is the median of the rounds' own ratios. The
issue's targets: K = 1 / K = 16 >= 2x, K = 16 / plain <= 1.5x (moonshot 1.2x); and --per-example-kv at
K = 1 (each example's KV computed once and copied into the joined contexts) against both. Each record also
holds every contender's engine steps by kind (prefill, eager decode, CUDA-graph decode) with
their time: where the time goes. Dry run: 12 samples of 6 tokens on the CPU, one timed round.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import common
import torch

CONTENDERS = {
    "plain": dict(gamma=0.0, eta=0.0, num_negatives=0),
    "K=1": dict(share_negatives=1),
    "K=16": dict(share_negatives=16),
    "per-example K=1": dict(share_negatives=1, per_example_kv=True),
}
RATIOS = {"k1_over_k16": ("K=1", "K=16"), "k16_over_plain": ("K=16", "plain"), "k1_over_plain": ("K=1", "plain"),
          "k1_over_per_example": ("K=1", "per-example K=1"), "per_example_over_plain": ("per-example K=1", "plain")}


def make_run(folder: Path, label: str, settings: dict, batch: int, n: int, max_new: int, device: str, models: dict):
    from steer.config import SteerConfig
    from steer.data.generate import GenerateRequest, build_engine, plan_generation, run_generation
    from steer.data.models import load_models
    from steer.demo.models import demo_base_dir, demo_expert_dir, demo_real_examples

    real, counter = demo_real_examples(), iter(range(10**6))

    def once() -> dict:
        out = folder / f"{label.replace('=', '')}-{next(counter)}.jsonl"  # steer never overwrites
        config = SteerConfig(**{"top_k": 10, "max_new_tokens": max_new, "seed": 0, **settings})
        request = GenerateRequest(real_texts=real, real_name="pyjokes", expert=str(demo_expert_dir()), base=str(demo_base_dir()),
                                  prompt="", n=n, out=out, config=config, quiet=True, batch_size=batch, device=device)  # fmt: skip
        if "models" not in models:  # loading is no contender's time
            plan = plan_generation(request)
            models["models"] = load_models(plan.sources, dtype=_dtype(request))
        start = time.perf_counter()
        plan = plan_generation(request)
        engine = build_engine(plan, models["models"])
        summary = run_generation(plan, engine)
        if torch.cuda.is_available() and device != "cpu":
            torch.cuda.synchronize()
        return {"seconds": time.perf_counter() - start, "hit": summary.negative_cache_hit, "tokens": summary.tokens,
                "steps": engine.step_stats.as_dict(),  # where the time went: prefill, eager decode, graph steps
                "chunk_hit": summary.chunk_cache_hit}

    return once


def _dtype(request):
    """The dtype ``steer generate`` runs in on this device (bfloat16 on a GPU, float32 on the CPU)."""
    from steer.data.models import pick_device, pick_dtype

    return pick_dtype(request.dtype, pick_device(request.device))


def paired(times: dict, a: str, b: str) -> float | None:
    pairs = [x / y for x, y in zip(times[a], times[b])]
    return statistics.median(pairs) if pairs else None


def main() -> int:
    from steer.engine.scheduler import describe_steps

    args = common.parse_args(__doc__.splitlines()[0], lambda p: (
        p.add_argument("--batches", type=str, default=None, help="comma-separated --batch-size values (default 16,64)"),
        p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3, dry run 1)")))
    dev = common.device(args)
    batches = [int(b) for b in args.batches.split(",")] if args.batches else ([4] if args.dry_run else [16, 64])
    n, max_new = (12, 6) if args.dry_run else (200, 48)
    max_rounds = args.rounds or (1 if args.dry_run else 3)
    budget, records = common.Budget(args.budget_s), common.Records(args.jsonl, "share")
    name = common.device_name(dev)
    records.emit(record="setup", device=name, samples=n, max_new_tokens=max_new, batches=batches)
    print(f"# {name}: steer generate --n {n} --max-new-tokens {max_new} on the demo models, plain vs --share-negatives 1 / 16 and --per-example-kv")
    failures, models = 0, {}
    with tempfile.TemporaryDirectory() as scratch:
        for index, batch in enumerate(batches):
            if common.batch_out_of_budget(budget, records, batch):
                failures += 1
                continue
            folder = Path(scratch) / f"b{batch}"
            folder.mkdir()
            runs = {label: make_run(folder, label, settings, batch, n, max_new, dev.type, models) for label, settings in CONTENDERS.items()}
            times: dict[str, list[float]] = {label: [] for label in runs}
            hits, tokens, steps, errors, warm, chunk_hits = {}, {}, {}, {}, {}, {}
            for label, run in runs.items():  # warm-up: first loads and compiles
                try:
                    warm[label] = run()["seconds"]
                except Exception as error:  # noqa: BLE001 (record, go on)
                    errors[label] = f"{type(error).__name__}: {error}"[:300]
            rounds = 0
            while rounds < max_rounds and not errors:
                estimate = sum(min([warm[c]] + times[c]) for c in runs)
                if rounds >= 1 and budget.left() < estimate * (1 + 2 * (len(batches) - index - 1)) + 5:
                    break  # keep time for the later batch sizes
                for label, run in runs.items():
                    result = run()
                    times[label].append(result["seconds"])
                    hits[label], tokens[label], steps[label] = result["hit"], result["tokens"], result["steps"]
                    chunk_hits[label] = result["chunk_hit"]
                rounds += 1
            ratios = {key: paired(times, a, b) for key, (a, b) in RATIOS.items()} if not errors else {}
            if errors:
                failures += 1
                common.note(f"batch {batch}: {', '.join(errors)} failed")
            elif rounds < max_rounds:
                common.note(f"batch {batch}: {rounds} timed rounds (budget)")
            seconds = {c: statistics.median(t) for c, t in times.items() if t}
            records.emit(batch=batch, rounds=rounds, seconds=seconds, all_times=times, negative_cache_hit=hits, chunk_cache_hit=chunk_hits, tokens=tokens,
                         steps=steps, errors=errors or None, **ratios)  # fmt: skip
            line = f"batch {batch} ({rounds} timed rounds): " + ", ".join(f"{c} {s:.2f} s" for c, s in seconds.items())
            line += "".join(f" | {key} {value:.2f}x" for key, value in ratios.items() if value is not None)
            line += "".join(f" | {label} ERROR {message}" for label, message in errors.items())
            print(line, flush=True)
            for label, kinds in steps.items():  # the last round's steps: how many of each kind, and what one cost
                print(f"  {label} steps: {describe_steps(kinds)}", flush=True)
    records.emit(record="summary", failures=failures)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
