"""The fused STEER samplers on a GPU: effective bandwidth against the device peak, and speed-up
over the torch eager chain (benchmarks/eager.py), per shape [B, K, V], dtype and sampler.

    python benchmarks/gpu/bench_sampler.py [--jsonl FILE] [--budget-s S] [--quick] [--dry-run]

Contenders, each timed with CUDA events after warm-up, the L2 flushed before every run (the
logits come from HBM, as in a decode step), median of --reps:
  triton_kernels  steer_kernels.launch_sample into preallocated buffers (no host sync, what a
                  captured CUDA graph replays)
  triton_op       steer.sample(backend="triton"): checks, buffers, the error read-back
  cuda_op         steer.sample(backend="cuda") (csrc/cuda), when steer._C_cuda is built
  eager           the torch eager chain (K log_softmaxes, weighted sum, topk / sort, softmax,
                  multinomial)
Bandwidth = bytes of logits read (B * K * V * itemsize) / time; the floor of any sampler, since
it must read every logit once. Fractions against the datasheet peak (detected from the device
name; STEER_PEAK_GBPS overrides) and against a measured 1 GiB device-to-device copy.
"""

from __future__ import annotations

import itertools

import common
import torch

SAMPLERS = {
    "T1": dict(temperature=1.0, top_k=0, top_p=1.0),
    "topk10": dict(temperature=1.0, top_k=10, top_p=1.0),
    "topp0.9": dict(temperature=1.0, top_k=0, top_p=0.9),
    "greedy": dict(temperature=0.0, top_k=0, top_p=1.0),
}


def cases(dry_run: bool, quick: bool):
    if dry_run:
        return [((1, 3, 1000), torch.float32, "T1"), ((2, 3, 1000), torch.float32, "greedy")]
    if quick:
        shapes = [(1, 7, 128256), (8, 7, 128256), (64, 7, 128256)]
        return [(sh, dt, s) for sh in shapes for dt in (torch.float32, torch.bfloat16) for s in ("T1", "topk10", "topp0.9")]
    # The headline shapes first (V = 128256, K = 7, largest batch first), so a budget cut drops the rest.
    shapes = sorted(((b, k, v) for b in (64, 8, 1) for k in (7, 3) for v in (128256, 32000)),
                    key=lambda s: (s[2] != 128256, s[1] != 7, -s[0]))
    return [(sh, dt, s) for sh, dt, s in itertools.product(shapes, (torch.float32, torch.bfloat16), SAMPLERS)]


def main() -> int:
    args = common.parse_args(__doc__.splitlines()[0], lambda p: (
        p.add_argument("--quick", action="store_true", help="9 shapes x dtypes x 3 samplers"),
        p.add_argument("--reps", type=int, default=None)))
    dev = common.device(args)

    import steer
    from eager import eager_chain

    import steer_kernels

    name = common.device_name(dev)
    peak, _ = common.datasheet(name)
    copy = common.copy_gbps(dev)
    has_cuda = dev.type == "cuda" and "cuda" in steer.backends("sample")
    records = common.Records(args.jsonl, "sampler")
    records.emit(record="device", device=name, datasheet_gbps=peak, copy_gbps=copy, cuda_backend=has_cuda,
                 auto_backend=steer.backends("sample")[0] if dev.type == "cuda" else "dry-run")
    print(f"# {name}: datasheet {common.fmt(peak, '.0f')} GB/s, measured d2d copy {common.fmt(copy, '.0f')} GB/s; "
          f"cuda backend {'built' if has_cuda else 'NOT available'}")
    reps = args.reps or (1 if args.dry_run else 20)
    eager_reps = max(1, reps // 2)
    budget = common.Budget(args.budget_s)
    print(f"{'B':>3} {'K':>2} {'V':>6} {'dtype':>8} {'sampler':>8} | {'triton us':>9} {'GB/s':>6} {'%peak':>5} "
          f"{'%copy':>5} | {'t.op us':>8} | {'cuda us':>8} {'GB/s':>6} {'%peak':>5} | {'eager us':>9} {'x(best)':>7}")
    done = skipped = errors = disagree = 0
    todo = cases(args.dry_run, args.quick)
    for (batch, streams, vocab), dtype, sampler in todo:
        if budget.over(reserve=5):
            skipped = len(todo) - done
            common.note(f"budget spent: {skipped} of {len(todo)} cases not run")
            break
        gen = torch.Generator(device=dev).manual_seed(batch * 1000 + streams)
        logits = (torch.randn((batch, streams, vocab), generator=gen, device=dev) * 3.0).to(dtype)
        weights = steer.steer_weights(0.2, 0.2, streams - 2).to(dev)
        row_weights = weights.expand(batch, streams)
        keys = torch.arange(batch, device=dev)
        tokens = torch.empty(batch, dtype=torch.int64, device=dev)
        logprobs = torch.empty(batch, device=dev)
        err = torch.empty(3, dtype=torch.int64, device=dev)
        params = SAMPLERS[sampler]
        gigabytes = logits.numel() * logits.element_size() / 1e9

        def kernels():
            steer_kernels.launch_sample(logits, row_weights, keys, keys, keys, tokens, logprobs, err, vocab_size=vocab,
                                        plausibility_alpha=0.0, **params)

        def op(backend):
            return lambda: steer.sample(logits, weights, seed=0, backend=backend, **params)

        def eager():
            return eager_chain(logits, row_weights, **params)

        result = {}
        try:
            result["triton_kernels_ms"] = common.median_ms(kernels, dev, reps=reps)
            result["triton_op_ms"] = common.median_ms(op("triton"), dev, reps=reps)
            if has_cuda:
                result["cuda_op_ms"] = common.median_ms(op("cuda"), dev, reps=reps)
                # the two backends draw the same tokens (same Philox noise, same filters): tests/ops
                # checks it; here it is reported (a difference is noted, the step does not fail)
                differ = (steer.sample(logits, weights, seed=5, backend="cuda", **params)
                          != steer.sample(logits, weights, seed=5, backend="triton", **params)).sum()
                result["backends_agree"] = int(differ) == 0
                result["tokens_differ"] = int(differ)
            result["eager_ms"] = common.median_ms(eager, dev, reps=eager_reps)
        except Exception as error:  # noqa: BLE001 (record, go on with the next case)
            result["error"] = f"{type(error).__name__}: {error}"[:300]
        for key in ("triton_kernels", "triton_op", "cuda_op"):
            ms = result.get(f"{key}_ms")
            if ms:
                result[f"{key}_gbps"] = gigabytes / (ms / 1e3)
        best = min((result[k] for k in ("triton_op_ms", "cuda_op_ms") if result.get(k)), default=None)
        if best and result.get("eager_ms"):
            result["eager_over_best_op"] = result["eager_ms"] / best
        records.emit(B=batch, K=streams, V=vocab, dtype=dtype, sampler=sampler, gigabytes=gigabytes, datasheet_gbps=peak,
                     copy_gbps=copy, **result)
        done += 1

        def frac(gbps, ceiling):
            return common.fmt(100 * gbps / ceiling, "5.1f") if gbps and ceiling else "    -"

        tg, cg = result.get("triton_kernels_gbps"), result.get("cuda_op_gbps")
        us = {k: (result[k] * 1e3 if result.get(k) else None) for k in ("triton_kernels_ms", "triton_op_ms", "cuda_op_ms",
                                                                        "eager_ms")}
        line = (f"{batch:>3} {streams:>2} {vocab:>6} {str(dtype)[6:]:>8} {sampler:>8} | "
                f"{common.fmt(us['triton_kernels_ms'], '9.1f')} {common.fmt(tg, '6.0f')} {frac(tg, peak)} {frac(tg, copy)} | "
                f"{common.fmt(us['triton_op_ms'], '8.1f')} | "
                f"{common.fmt(us['cuda_op_ms'], '8.1f')} {common.fmt(cg, '6.0f')} {frac(cg, peak)} | "
                f"{common.fmt(us['eager_ms'], '9.1f')} {common.fmt(result.get('eager_over_best_op'), '7.1f')}")
        if "error" in result:
            errors += 1
            line += f"  ERROR {result['error']}"
        if result.get("backends_agree") is False:
            disagree += 1
            line += f"  (cuda and triton differ in {result['tokens_differ']} of {batch} tokens)"
        print(line, flush=True)
    records.emit(record="summary", cases=done, skipped=skipped, errors=errors)
    if dev.type == "cuda" and not has_cuda:
        common.note("steer._C_cuda not built: the cuda backend was not measured")
    if errors:
        common.note(f"{errors} of {done} cases failed")
    if disagree:
        common.note(f"cuda and triton backends drew different tokens in {disagree} cases")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
