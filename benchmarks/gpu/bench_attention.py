"""Paged attention on a GPU: the Triton decode and extend kernels (steer_kernels/paged_attention.py)
against torch SDPA, with a correctness check of every case.

    python benchmarks/gpu/bench_attention.py [--jsonl FILE] [--budget-s S] [--dry-run]

Heads 32 query / 8 kv, D = 128, bfloat16, 16-token blocks in shuffled order (one Llama-3-8B layer;
one case with TinyLlama's 32 / 4, D = 64). Per case (rows of n new queries over a context of c keys):
  kernel         paged_decode_attention (n = 1 everywhere) or paged_extend_attention, reading K / V
                 in place from the pool
  gather+sdpa    what torch needs for a paged pool: gather each row's K / V (pool[slots]), then
                 F.scaled_dot_product_attention per group of equal (n, c) rows (causal lower-right
                 for n > 1, GQA through enable_gqa); the gather is timed with it
  dense sdpa     SDPA on K / V already contiguous [R, Hkv, c, D] (no paging, no gather): torch's
                 best case, for batches of equal rows only
Reported: times, the ratios (baseline / kernel), the kernel's bandwidth over the bytes it must move
(each row's K / V once, q and out) against the datasheet peak, and for the extend cases its
TFLOP/s (4 H D per attended (query, key)) against the dense bf16 peak. Every kernel output is
checked against gather+sdpa (relative Frobenius error; bf16 passes under 1e-2).
"""

from __future__ import annotations

import math

import common
import torch
import torch.nn.functional as F


class Case:
    """Rows [(n_r, c_r)] over a one-layer paged pool, the kernel's inputs and the torch baselines'."""

    def __init__(self, rows, *, heads, kv_heads, head_dim, dtype, dev, block_size, window=0, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.rows, self.window, self.dev = list(rows), window, dev
        self.heads, self.kv_heads, self.head_dim, self.block_size = heads, kv_heads, head_dim, block_size
        self.group = heads // kv_heads
        per_row = [math.ceil(c / block_size) for _, c in self.rows]
        ids = torch.randperm(sum(per_row), generator=gen).split(per_row)
        tables = torch.zeros((len(self.rows), max(per_row)), dtype=torch.int32)
        for r, blocks in enumerate(ids):
            tables[r, : len(blocks)] = blocks.to(torch.int32)
        slots = sum(per_row) * block_size
        tokens = sum(n for n, _ in self.rows)
        self.k_pool = torch.randn((slots, kv_heads, head_dim), device=dev).to(dtype)
        self.v_pool = torch.randn((slots, kv_heads, head_dim), device=dev).to(dtype)
        self.q = torch.randn((tokens, heads, head_dim), device=dev).to(dtype)
        self.out = torch.empty_like(self.q)
        self.tables = tables.to(dev)
        self.lens = torch.tensor([c for _, c in self.rows], dtype=torch.int32, device=dev)
        starts = [0]
        for n, _ in self.rows:
            starts.append(starts[-1] + n)
        self.starts = torch.tensor(starts, dtype=torch.int32, device=dev)
        self.max_query_length = max(n for n, _ in self.rows)
        self.scale = head_dim**-0.5
        # groups of equal (n, c): (token index [Rg, n], slots [Rg, c], n, c)
        self.groups = []
        by_shape: dict = {}
        for r, (n, c) in enumerate(self.rows):
            by_shape.setdefault((n, c), []).append(r)
        for (n, c), members in by_shape.items():
            positions = torch.arange(c)
            slot_rows = [tables[r].long()[positions // block_size] * block_size + positions % block_size for r in members]
            index = torch.stack([torch.arange(starts[r], starts[r] + n) for r in members])
            self.groups.append((index.to(dev), torch.stack(slot_rows).to(dev), n, c))
        self.uniform = len(self.groups) == 1
        if self.uniform:  # contiguous K / V for dense SDPA: [R, Hkv, c, D]
            _, slots_, _, _ = self.groups[0]
            self.k_dense = self.k_pool[slots_].transpose(1, 2).contiguous()
            self.v_dense = self.v_pool[slots_].transpose(1, 2).contiguous()
        self.gqa = self._probe_gqa()

    # -- sizes ---------------------------------------------------------------------------------

    def attended(self) -> int:
        total = 0
        for n, c in self.rows:
            for p in range(c - n, c):
                total += p + 1 - (max(0, p - self.window + 1) if self.window else 0)
        return total

    def flops(self) -> float:
        return 4.0 * self.heads * self.head_dim * self.attended()

    def gigabytes(self) -> float:
        keys = sum(min(c, self.window + n - 1) if self.window else c for n, c in self.rows)
        tokens = self.q.shape[0]
        return (2 * keys * self.kv_heads + 2 * tokens * self.heads) * self.head_dim * self.q.element_size() / 1e9

    # -- the paths -------------------------------------------------------------------------------

    def kernel(self):
        from steer_kernels.paged_attention import (
            paged_decode_attention,
            paged_extend_attention,
        )

        if self.max_query_length == 1:
            return paged_decode_attention(self.q, self.k_pool, self.v_pool, self.tables, self.lens,
                                          block_size=self.block_size, scale=self.scale, sliding_window=self.window,
                                          out=self.out)
        return paged_extend_attention(self.q, self.k_pool, self.v_pool, self.tables, self.starts, self.lens,
                                      block_size=self.block_size, scale=self.scale,
                                      max_query_length=self.max_query_length, sliding_window=self.window, out=self.out)

    def _mask(self, n, c):
        """None (decode, no window), a lower-right causal bias, or a bool band mask (window)."""
        if self.window:
            positions = torch.arange(c - n, c, device=self.dev).unsqueeze(1)
            keys = torch.arange(c, device=self.dev).unsqueeze(0)
            return (keys <= positions) & (keys > positions - self.window)
        if n == 1:
            return None
        from torch.nn.attention.bias import causal_lower_right

        return causal_lower_right(n, c)

    def _sdpa(self, q, k, v, mask):
        """q [R, H, n, D], k / v [R, Hkv, c, D]."""
        if self.gqa:
            try:
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=True)
            except (RuntimeError, TypeError, NotImplementedError):  # no GQA for this mask here: repeat the heads
                self.gqa = False
        k, v = k.repeat_interleave(self.group, dim=1), v.repeat_interleave(self.group, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)

    def _probe_gqa(self) -> bool:
        try:
            index, slots, _, _ = self.groups[0]
            q = self.q[index[:1, :1]].transpose(1, 2)
            k = self.k_pool[slots[:1, :4]].transpose(1, 2)
            F.scaled_dot_product_attention(q, k, k, scale=self.scale, enable_gqa=True)
            return True
        except (TypeError, RuntimeError):
            return False

    def gather_sdpa(self):
        out = self.out
        for index, slots, n, c in self.groups:
            k = self.k_pool[slots].transpose(1, 2)  # [Rg, Hkv, c, D]
            v = self.v_pool[slots].transpose(1, 2)
            q = self.q[index].transpose(1, 2)  # [Rg, H, n, D]
            got = self._sdpa(q, k, v, self._mask(n, c))
            out[index.flatten()] = got.transpose(1, 2).reshape(-1, self.heads, self.head_dim)
        return out

    def dense_sdpa(self):
        index, _, n, c = self.groups[0]
        q = self.q[index].transpose(1, 2)
        return self._sdpa(q, self.k_dense, self.v_dense, self._mask(n, c))


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def cases(dry_run: bool):
    if dry_run:
        dims = dict(heads=4, kv_heads=2, head_dim=16, dtype=torch.float32, block_size=4)
        return [
            ("decode R=2 c=12", [(1, 12)] * 2, dims, 0),
            ("extend mix 2x(5/9)+(1/7)", [(5, 9), (5, 9), (1, 7)], dims, 0),
            ("extend window 3, 2x(4/10)", [(4, 10)] * 2, dims, 3),
        ]
    llama8b = dict(heads=32, kv_heads=8, head_dim=128, dtype=torch.bfloat16, block_size=16)
    tinyllama = dict(heads=32, kv_heads=4, head_dim=64, dtype=torch.bfloat16, block_size=16)
    return [  # the headline cases first: a budget cut drops the last ones
        ("decode R=64 c=4096", [(1, 4096)] * 64, llama8b, 0),
        ("prefill-heavy 8x512/1024 + 56 decode@1024", [(512, 1024)] * 8 + [(1, 1024)] * 56, llama8b, 0),
        ("decode R=8 c=4096", [(1, 4096)] * 8, llama8b, 0),
        ("prefix hits 16x128/4096", [(128, 4096)] * 16, llama8b, 0),
        ("prefill 4x2048", [(2048, 2048)] * 4, llama8b, 0),
        ("decode R=1 c=8192", [(1, 8192)], llama8b, 0),
        ("decode R=64 c=1024", [(1, 1024)] * 64, llama8b, 0),
        ("decode R=192 c=136 (TinyLlama heads)", [(1, 136)] * 192, tinyllama, 0),
        ("chunked 2x512/8192 + 120 decode@2048", [(512, 8192)] * 2 + [(1, 2048)] * 120, llama8b, 0),
        ("decode R=16 c=16384", [(1, 16384)] * 16, llama8b, 0),
        ("decode R=8 c=32768 window 4096", [(1, 32768)] * 8, llama8b, 4096),
        ("prefill 4x2048 window 512", [(2048, 2048)] * 4, llama8b, 512),
    ]


def main() -> int:
    args = common.parse_args(__doc__.splitlines()[0], lambda p: p.add_argument("--reps", type=int, default=None))
    dev = common.device(args)
    name = common.device_name(dev)
    peak_gbps, peak_tflops = common.datasheet(name)
    records = common.Records(args.jsonl, "attention")
    records.emit(record="device", device=name, datasheet_gbps=peak_gbps, datasheet_tflops=peak_tflops)
    reps = args.reps or (1 if args.dry_run else 20)
    budget = common.Budget(args.budget_s)
    tolerance = 1e-4 if args.dry_run else 1e-2  # float32 under the interpreter; bfloat16 on the GPU
    print(f"# {name}: datasheet {common.fmt(peak_gbps, '.0f')} GB/s, {common.fmt(peak_tflops, '.0f')} TFLOP/s bf16")
    errors = done = 0
    todo = cases(args.dry_run)
    for label, rows, dims, window in todo:
        if budget.over(reserve=5):
            common.note(f"budget spent: {len(todo) - done} of {len(todo)} cases not run")
            break
        result: dict = {}
        try:
            case = Case(rows, window=window, dev=dev, **dims)
            want = case.gather_sdpa().clone()
            case.out.fill_(float("nan"))  # poison: every element must be written
            got = case.kernel().clone()
            result["rel_error"] = relative_error(got, want)
            result["correct"] = bool(torch.isfinite(got).all()) and result["rel_error"] < tolerance
            if not result["correct"]:
                errors += 1
            result["kernel_ms"] = common.median_ms(case.kernel, dev, reps=reps)
            result["gather_sdpa_ms"] = common.median_ms(case.gather_sdpa, dev, reps=reps)
            if case.uniform:
                dense = case.dense_sdpa().transpose(1, 2).reshape(-1, case.heads, case.head_dim)
                result["dense_rel_error"] = relative_error(dense, want)
                result["dense_sdpa_ms"] = common.median_ms(case.dense_sdpa, dev, reps=reps)
            result["gqa_sdpa"] = case.gqa
            seconds = result["kernel_ms"] / 1e3
            result["kernel_gbps"] = case.gigabytes() / seconds
            result["kernel_tflops"] = case.flops() / seconds / 1e12
            result["gather_over_kernel"] = result["gather_sdpa_ms"] / result["kernel_ms"]
            if "dense_sdpa_ms" in result:
                result["dense_over_kernel"] = result["dense_sdpa_ms"] / result["kernel_ms"]
            kind = "decode" if max(n for n, _ in rows) == 1 else "extend"
        except Exception as error:  # noqa: BLE001 (record, go on)
            errors += 1
            kind = "error"
            result["error"] = f"{type(error).__name__}: {error}"[:300]
        finally:
            case = None
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        done += 1
        records.emit(case=label, phase=kind, rows=len(rows), window=window, heads=dims["heads"], kv_heads=dims["kv_heads"],
                     head_dim=dims["head_dim"], dtype=dims["dtype"], datasheet_gbps=peak_gbps,
                     datasheet_tflops=peak_tflops, **result)
        if "error" in result:
            print(f"{label}: ERROR {result['error']}", flush=True)
            continue
        gb, tf = result["kernel_gbps"], result["kernel_tflops"]
        line = (f"{label:44s} kernel {result['kernel_ms']:8.3f} ms  {gb:7.0f} GB/s"
                f" ({common.fmt(100 * gb / peak_gbps if peak_gbps else None, '.0f')}% peak)")
        if kind == "extend":
            line += f" {tf:6.1f} TFLOP/s ({common.fmt(100 * tf / peak_tflops if peak_tflops else None, '.0f')}%)"
        line += f" | gather+sdpa {result['gather_sdpa_ms']:8.3f} ms ({result['gather_over_kernel']:5.2f}x)"
        if "dense_sdpa_ms" in result:
            line += f" | dense sdpa {result['dense_sdpa_ms']:8.3f} ms ({result['dense_over_kernel']:5.2f}x)"
        line += f" | rel err {result['rel_error']:.1e}{'' if result['correct'] else ' WRONG'}"
        print(line, flush=True)
    records.emit(record="summary", cases=done, errors=errors)
    if errors:
        common.note(f"{errors} of {done} cases wrong or failed")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
