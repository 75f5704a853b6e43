"""Compile every Triton kernel variant for a GPU target without a GPU (ptxas ships with triton).

The interpreter (TRITON_INTERPRET=1) runs the kernels' logic on the CPU but never lowers them, so
a kernel that only the GPU compiler rejects (mismatched types across branches, unsupported ops)
would pass every interpreted test. This module runs the real launchers with CPU tensors while
``JITFunction.run`` is swapped for a recorder, then compiles each recorded launch with
``triton.compile`` for sm_90 (H100) down to a cubin and reports registers and spills:

    python -m steer_kernels.compile_check            # a table, exit status 1 on a failure

It must run in a process where TRITON_INTERPRET is not set (the kernels must be JITFunctions).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton._C.libtriton import native_specialize_impl
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction

SM90 = GPUTarget("cuda", 90, 32)
OPTIONS = ("num_warps", "num_stages", "enable_fp_fusion")


@contextlib.contextmanager
def recording():
    """Record (kernel, bound arguments, options) for every launch instead of running it."""
    launches = []
    original = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in OPTIONS}
        bound = dict(zip(self.arg_names, args))
        bound.update(kwargs)
        launches.append((self, bound, options))

    JITFunction.run = record
    try:
        yield launches
    finally:
        JITFunction.run = original


def compile_launch(kernel: JITFunction, bound: dict, options: dict, target: GPUTarget = SM90):
    """Compile as the JIT would for these arguments: integers equal to 1 become constants and
    pointers / integers divisible by 16 carry tt.divisibility (what lets loads vectorise)."""
    backend = make_backend(target)
    constexprs, signature, attrs = {}, {}, {}
    for index, name in enumerate(kernel.arg_names):
        param = kernel.params[index]
        if param.is_constexpr:
            constexprs[name] = bound[name]
            signature[name] = "constexpr"
            continue
        kind, key = native_specialize_impl(backend, bound[name], param.is_const, not param.do_not_specialize,
                                           not param.do_not_specialize_on_alignment)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[(index,)] = key
        elif isinstance(key, str):
            attrs[(index,)] = backend.parse_attr(key)
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=target, options=options)


def resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, bytes of stack: spills and local arrays) from cuobjdump."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.cubin")
        with open(path, "wb") as handle:
            handle.write(cubin)
        report = subprocess.run([cuobjdump, "--dump-resource-usage", path], capture_output=True, text=True,
                                check=True).stdout
    registers, stack = re.search(r"REG:(\d+)", report), re.search(r"STACK:(\d+)", report)
    return int(registers.group(1)) if registers else -1, int(stack.group(1)) if stack else -1


def variants():
    """(name, launcher call) pairs covering the constexpr combinations the wrappers use."""
    import steer_kernels

    def sample_call(dtype=torch.float32, vocab=4099, streams=7, **sampler):
        batch = 4
        logits = torch.zeros((batch, streams, vocab), dtype=dtype)
        weights = torch.ones((batch, streams))
        keys = torch.zeros(batch, dtype=torch.int64)
        out = (torch.empty(batch, dtype=torch.int64), torch.empty(batch), torch.empty(3, dtype=torch.int64))
        defaults = dict(temperature=1.0, top_k=0, top_p=1.0, vocab_size=vocab, plausibility_alpha=0.0)
        defaults.update(sampler)
        return lambda: steer_kernels.launch_sample(logits, weights, keys, keys, keys, *out, **defaults)

    def combine_call(normalize, alpha=0.0, dtype=torch.float32):
        logits = torch.zeros((4, 5, 5000), dtype=dtype)
        out = torch.empty((4, 5000))
        return lambda: steer_kernels.launch_combine(logits, torch.ones(4, 5), out, torch.empty(3, dtype=torch.int64),
                                              normalize=normalize, vocab_size=5000, plausibility_alpha=alpha)

    def paged_call(dtype=torch.bfloat16, heads=32, kv_heads=8, head_dim=128, splits=1, cache_dtype=None):
        from steer_kernels.paged_attention import paged_decode_attention

        rows, block_size, max_blocks = 4, 16, 8
        q = torch.zeros((rows, heads, head_dim), dtype=dtype)
        pool = torch.zeros((2, 64 * block_size, kv_heads, head_dim), dtype=cache_dtype or dtype)  # [layer, slot, ...]
        tables = torch.zeros((rows, max_blocks), dtype=torch.int32)
        lens = torch.ones(rows, dtype=torch.int32)
        return lambda: paged_decode_attention(q, pool[1], pool[1], tables, lens, block_size=block_size, scale=0.1,
                                              num_splits=splits)

    def extend_call(dtype=torch.bfloat16, heads=32, kv_heads=8, head_dim=128, window=0, soft_cap=0.0,
                    max_query_length=256):
        from steer_kernels.paged_attention import paged_extend_attention

        rows, block_size, max_blocks = 4, 16, 32
        q = torch.zeros((rows * max_query_length, heads, head_dim), dtype=dtype)
        pool = torch.zeros((2, 64 * block_size, kv_heads, head_dim), dtype=dtype)  # [layer, slot, ...]
        tables = torch.zeros((rows, max_blocks), dtype=torch.int32)
        starts = torch.arange(rows + 1, dtype=torch.int32) * max_query_length
        lens = torch.full((rows,), max_query_length, dtype=torch.int32)
        return lambda: paged_extend_attention(q, pool[1], pool[1], tables, starts, lens, block_size=block_size,
                                              scale=0.1, max_query_length=max_query_length, sliding_window=window,
                                              soft_cap=soft_cap)

    # The extend kernel over D x dtype x GQA group (8 kv heads, G = 1, 4, 8 query heads each) x window.
    # The window is a runtime int, specialised only on its divisibility by 16 (0 and 4096 compile to
    # the same binary), so "on" is a window that is not a multiple of 16: the other specialisation.
    extend = [
        (f"paged extend {str(dtype)[6:]} H{8 * group}/8 D{head_dim} W{window}",
         extend_call(dtype, 8 * group, 8, head_dim, window=window))
        for head_dim in (64, 128)
        for dtype in (torch.bfloat16, torch.float16)
        for group in (1, 4, 8)
        for window in (0, 1000)
    ]
    extend += [
        ("paged extend fp32 H32/8 D128", extend_call(torch.float32)),
        ("paged extend fp32 H8/2 D256 W1000", extend_call(torch.float32, 8, 2, 256, window=1000)),
        ("paged extend bf16 H32/8 D128 soft cap", extend_call(soft_cap=50.0)),
        ("paged extend bf16 H32/8 D128 short rows", extend_call(max_query_length=4)),  # block_m 4, block_g 4
        ("paged extend bf16 MHA H8/8 D64 short rows", extend_call(heads=8, head_dim=64, max_query_length=1)),
        ("paged extend bf16 H64/8 D256", extend_call(heads=64, head_dim=256)),
    ]

    return extend + [
        ("paged decode bf16 H32/8 D128", paged_call()),
        ("paged decode bf16 H32/8 D128 split", paged_call(splits=8)),
        ("paged decode fp16 MHA D64 split", paged_call(torch.float16, 12, 12, 64, splits=4)),
        ("paged decode fp32 H8/2 D128", paged_call(torch.float32, 8, 2, 128)),
        ("paged decode bf16 H32/8 D256 split", paged_call(heads=32, kv_heads=8, head_dim=256, splits=4)),
        ("paged decode bf16 MQA H64/1 D80", paged_call(heads=64, kv_heads=1, head_dim=80)),
        ("paged decode bf16 q, fp16 cache", paged_call(cache_dtype=torch.float16)),
        ("combine normalize", combine_call(True)),
        ("combine raw bf16 plausibility", combine_call(False, 0.1, torch.bfloat16)),
        ("sample T=1", sample_call()),
        ("sample greedy fp16", sample_call(torch.float16, temperature=0.0)),
        ("sample top_k=10", sample_call(top_k=10)),
        ("sample top_p=0.9", sample_call(top_p=0.9)),
        ("sample top_k=50 top_p=0.9 plausibility", sample_call(top_k=50, top_p=0.9, plausibility_alpha=0.01)),
        ("sample top_k=1000 (exact search)", sample_call(top_k=1000)),
        ("sample greedy top_p bf16 K=16", sample_call(torch.bfloat16, streams=16, temperature=0.0, top_p=0.8)),
    ]


def main() -> int:
    failures = 0
    print(f"{'variant':42s} {'kernel':24s} {'regs':>5s} {'stack':>6s} {'smem':>7s}")
    for name, call in variants():
        with recording() as launches:
            call()
        for kernel, bound, options in launches:
            try:
                compiled = compile_launch(kernel, bound, options)
                regs, stack = resource_usage(compiled.asm["cubin"])
                print(f"{name:42s} {kernel.__name__:24s} {regs:>5d} {stack:>6d} {compiled.metadata.shared:>7d}")
            except Exception as error:  # noqa: BLE001 (report every failing variant)
                failures += 1
                print(f"{name:42s} {kernel.__name__:24s} FAILED: {type(error).__name__}: {error}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
