"""The linear layers of a decode step on the CPU: each weight read once for all of the step's rows.

A decode step of a small LM on a few CPU cores is bound by reading the weights, and torch's GEMM
reads a weight once per row for 2-3 rows (a 32000x512 float32 weight on the 2-core dev box:
7.7 ms for 1 row, 16 ms for 2, 24 ms for 3). A STEER step runs 2-24 rows (prompt, base and
negative streams), so ``decode_linear`` hands CPU inference calls of a few rows (``MAX_KERNEL_ROWS``)
to ``steer._C.decode_matmul`` (csrc/cpu/decode_matmul.cpp), which streams the weight once for all
of them: up to ~8 rows cost about what one does. Everything else (other devices, autograd, more
rows, weights small enough to stay in cache (``KERNEL_MIN_WEIGHT_BYTES``), other dtypes) is exactly ``F.linear`` (nn.Linear layout) or GPT-2 Conv1D's
``torch.addmm(b, x, W)``, with a weight of another dtype than x cast to x's first.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from steer.ops import compiled

LAYOUTS = {"out_in": 0, "in_out": 1}  # nn.Linear's weight [out, in]; GPT-2 Conv1D's [in, out]
# The most rows (x.numel() / in_features) that go to the kernel when x and the weight share a dtype;
# more go to torch's GEMM. The kernel is memory bound up to ~4-8 rows and compute bound after (at
# ~70% of the FMA peak); measured on the dev box (2-core Zen 4, torch 2.13 + MKL / oneDNN, weights
# not in cache; benchmarks/test_bench_decode_linear.py), torch's GEMM catches up at: float32
# between 32 and 64 rows (in_out 4096x4096; 64-128 for GPT-2's 768x3072) and 96-256 rows
# (out_in); float16 beyond 64 (torch runs it row by row); bfloat16 about 8 (oneDNN's AVX512-BF16
# GEMM, which rounds x to bfloat16, streams the weight once too and does twice the multiply-adds
# per instruction). 32 is the measured float32 crossover's lower end. A float32 x with a
# half-precision weight always takes the kernel: torch would first copy the whole weight to float32.
MAX_KERNEL_ROWS = {torch.float32: 32, torch.float16: 32, torch.bfloat16: 8}
# A weight smaller than this (when x shares its dtype) goes to torch's GEMM at any row count: it
# stays in the core's L2, so torch re-reading it per row costs nothing, and its register-blocked
# GEMM beats this kernel from a few rows on. Measured on two dev boxes (2-core Zen 4; 2-core Xeon
# with AVX-512, torch 2.13 + MKL), float32: a 224x224 weight at 16 rows 27 vs 33 us and 20 vs
# 43 us, a 2048x224 one (1.75 MiB) 132 vs 213 us; both equal at 1-2 rows. From 4 MiB on the
# kernel wins again at 4-16 rows (1024x1024: 90 vs 136 us at 4), as weights start to come from L3
# and memory. LoRA factors (r x in, out x r) are far below it: the kernel's dot products over
# r = 8 inputs were 4-8x slower than torch.
KERNEL_MIN_WEIGHT_BYTES = 2 * 2**20


@functools.cache
def _extension():
    """steer._C, or None where it does not import (a source tree that was never built)."""
    return compiled.extension("steer._C") if compiled.extension_imports("steer._C") else None


def _weight_layout(weight: torch.Tensor, layout: str) -> tuple[int, int] | None:
    """(kernel layout code, stride between rows of W) that read ``weight`` in place, or None.

    A weight with unit stride along its inner dimension is read as stored; a transposed view
    (unit stride along the outer dimension) is the other layout's contiguous case."""
    code = LAYOUTS[layout]
    if weight.stride(1) == 1 or weight.shape[1] == 1:
        return code, max(weight.stride(0), 1)
    if weight.stride(0) == 1 or weight.shape[0] == 1:
        return 1 - code, max(weight.stride(1), 1)
    return None


def _kernel_plan(x, weight, bias, layout: str) -> tuple[int, int, int] | None:
    """(layout code, row stride of W, outputs) when the kernel computes this call, else None."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'out_in' or 'in_out', got {layout!r}")
    if x.device.type != "cpu" or weight.device.type != "cpu" or x.dim() == 0 or weight.dim() != 2:
        return None
    if weight.dtype not in compiled.DTYPE_CODES or (x.dtype != torch.float32 and x.dtype != weight.dtype):
        return None
    n_out, n_in = weight.shape if layout == "out_in" else weight.shape[::-1]
    if x.shape[-1] != n_in or n_in == 0:
        return None  # a mismatch is left to torch, which names it
    if x.dtype == weight.dtype and (
        x.numel() > MAX_KERNEL_ROWS[x.dtype] * n_in or weight.numel() * weight.element_size() < KERNEL_MIN_WEIGHT_BYTES
    ):
        return None
    if bias is not None and (
        bias.device.type != "cpu" or bias.shape != (n_out,) or bias.dtype not in (torch.float32, weight.dtype)
    ):
        return None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return None  # autograd needs torch's op
    strides = _weight_layout(weight, layout)
    if strides is None or _extension() is None:
        return None
    return (*strides, n_out)


def uses_kernel(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, layout: str = "out_in"
) -> bool:
    """True iff ``decode_linear(x, weight, bias, layout=layout)`` runs the C++ kernel."""
    return _kernel_plan(x, weight, bias, layout) is not None


def decode_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    layout: str = "out_in",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` (layout "out_in", weight [out, in]) or ``x @ weight + bias``
    (layout "in_out", weight [in, out]) for x [..., in]; the output has x's dtype.

    ``out``: a [rows, out] tensor of x's dtype with unit stride along its last dimension to write
    into (the engine's logits buffer), for a 2-D x; returned."""
    plan = _kernel_plan(x, weight, bias, layout)
    if out is not None:
        _check_out(x, out, weight.shape[0] if layout == "out_in" else weight.shape[1])
    if plan is None or (out is not None and out.dtype != torch.float32):
        result = _torch_linear(x, weight, bias, layout)
        return result if out is None else out.copy_(result)
    code, ldw, n_out = plan
    rows = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    if rows.dtype != torch.float32:
        rows = rows.float()
    if rows.stride(-1) != 1 or rows.stride(0) < rows.shape[1]:
        rows = rows.contiguous()
    if bias is not None and (bias.dtype != torch.float32 or bias.stride(0) != 1):
        bias = bias.float().contiguous()
    if out is None:
        out = torch.empty((rows.shape[0], n_out), dtype=torch.float32)
    _extension().decode_matmul(
        rows.data_ptr(), rows.shape[0], rows.shape[1], rows.stride(0),
        weight.data_ptr(), compiled.DTYPE_CODES[weight.dtype], code, n_out, ldw,
        0 if bias is None else bias.data_ptr(), out.data_ptr(), out.stride(0), torch.get_num_threads(),
    )  # fmt: skip
    if x.dtype != torch.float32:
        out = out.to(x.dtype)
    return out if x.dim() == 2 else out.reshape(*x.shape[:-1], n_out)


def _check_out(x: torch.Tensor, out: torch.Tensor, n_out: int) -> None:
    rows = x.shape[0] if x.dim() == 2 else -1
    if out.dim() != 2 or tuple(out.shape) != (rows, n_out) or out.stride(1) != 1 or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(
            f"out must be a [{rows}, {n_out}] {x.dtype} tensor on {x.device} with unit stride along its last dimension, "
            f"got {tuple(out.shape)} {out.dtype} on {out.device} with strides {out.stride()}"
        )


def _torch_linear(x, weight, bias, layout: str) -> torch.Tensor:
    if weight.dtype != x.dtype:  # torch has no mixed-dtype linear
        weight = weight.to(x.dtype)
        bias = None if bias is None else bias.to(x.dtype)
    if layout == "out_in":
        return F.linear(x, weight, bias)
    if bias is None:
        return x @ weight
    return torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight).reshape(*x.shape[:-1], weight.shape[1])
