"""Paged attention: the new tokens of every row attend their row's keys, read in place from the
paged KV pool. One op for every kind of engine step: prefill, decode, a prefill after a prefix
hit, and any mix of them in one batch.

Rows are laid out varlen ("ragged"), never padded: row r's new queries are
``q[query_starts[r] : query_starts[r + 1]]`` (n_r of them), and its context holds
c_r = ``context_lengths[r]`` keys, the n_r new ones last (their K and V are already in the pool).
Key j of row r lives in slot ``block_tables[r, j // P] * P + j % P`` of ``k_cache`` / ``v_cache``
[num_slots, Hkv, D] (P = block_size). Query i of row r sits at position p = c_r - n_r + i and,
with query head h reading kv head h // (H / Hkv) (grouped-query attention, no copy of K or V):

    s_j   = scale * (q_i . k_j)                      for j in [lo(p), p]
    s_j   = cap * tanh(s_j / cap)                    when soft_cap = cap > 0 (Gemma 2)
    out_i = sum_j softmax(s)_j v_j
    lo(p) = max(0, p - W + 1) with a sliding window of W keys (Mistral, Gemma), else 0

which is causal within the new tokens and full over the cached prefix. Backends: the C++ kernel
of ``steer._C`` on the CPU (csrc/cpu/paged_attention.cpp), Triton's decode and extend kernels
on a GPU (steer_kernels/paged_attention.py), and ``paged_attention_reference`` (a per-row gather
in torch) anywhere else. Every backend agrees with the reference.
"""

from __future__ import annotations

import importlib.util
import math
import os

import torch

from steer.ops import compiled

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
BACKENDS = ("auto", "cpp", "triton", "torch")


def paged_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_starts: torch.Tensor,
    context_lengths: torch.Tensor,
    *,
    block_size: int,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:
    """The formula of this module, row by row in torch: gather each row's keys, expand the kv
    heads, mask, softmax. Computes in float64 when q is float64, else in float32; returns q's
    dtype. Slow on purpose: the definition every kernel is tested against, and the fallback
    where no kernel runs."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.empty_like(q)
    starts, lengths = query_starts.tolist(), context_lengths.tolist()
    group = q.shape[1] // k_cache.shape[1]
    for row, context in enumerate(lengths):
        first, last = starts[row], starts[row + 1]
        if first == last:
            continue
        blocks = block_tables[row, : -(-context // block_size)].to(torch.long)
        slots = (blocks.unsqueeze(1) * block_size + torch.arange(block_size, device=blocks.device)).flatten()[:context]
        keys = k_cache[slots].to(compute).repeat_interleave(group, dim=1)  # [c, H, D]
        values = v_cache[slots].to(compute).repeat_interleave(group, dim=1)
        queries = q[first:last].to(compute)  # [n, H, D]
        scores = torch.einsum("nhd,chd->hnc", queries, keys) * scale
        if soft_cap:
            scores = soft_cap * torch.tanh(scores / soft_cap)
        positions = torch.arange(context - (last - first), context, device=q.device).unsqueeze(1)
        key_positions = torch.arange(context, device=q.device).unsqueeze(0)
        allowed = key_positions <= positions
        if sliding_window:
            allowed &= key_positions > positions - sliding_window
        scores = scores.masked_fill(~allowed, -math.inf)
        out[first:last] = torch.einsum("hnc,chd->nhd", torch.softmax(scores, dim=-1), values).to(q.dtype)
    return out


def check_paged_attention(q, k_cache, v_cache, block_tables, query_starts, context_lengths, block_size, sliding_window):
    """Shapes, dtypes and devices; a ValueError naming the argument. Values (a context shorter
    than its queries, a table too narrow) are the caller's contract: they are not read back
    from the device."""
    if q.dim() != 3:
        raise ValueError(f"q must be [tokens, heads, head_dim], got shape {tuple(q.shape)}")
    if k_cache.dim() != 3 or k_cache.shape != v_cache.shape:
        raise ValueError(
            f"k_cache and v_cache must both be [num_slots, kv_heads, head_dim], got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    heads, head_dim = q.shape[1], q.shape[2]
    kv_heads = k_cache.shape[1]
    if k_cache.shape[2] != head_dim:
        raise ValueError(f"head_dim of q ({head_dim}) and of the cache ({k_cache.shape[2]}) differ")
    if kv_heads < 1 or heads % kv_heads:
        raise ValueError(f"the query heads ({heads}) must be a multiple of the kv heads ({kv_heads})")
    for name, tensor in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if tensor.dtype not in FLOATS + (torch.float64,):
            raise ValueError(f"{name} must be a float tensor, got {tensor.dtype}")
    if k_cache.dtype != v_cache.dtype:
        raise ValueError(f"k_cache and v_cache dtypes differ: {k_cache.dtype} and {v_cache.dtype}")
    rows = context_lengths.shape[0] if context_lengths.dim() == 1 else -1
    if rows < 0:
        raise ValueError(f"context_lengths must be 1-D [rows], got shape {tuple(context_lengths.shape)}")
    if query_starts.shape != (rows + 1,):
        raise ValueError(f"query_starts must be [rows + 1] = [{rows + 1}], got shape {tuple(query_starts.shape)}")
    if block_tables.dim() != 2 or block_tables.shape[0] != rows:
        raise ValueError(f"block_tables must be [rows={rows}, max_blocks], got shape {tuple(block_tables.shape)}")
    for name, tensor in (("block_tables", block_tables), ("query_starts", query_starts), ("context_lengths", context_lengths)):
        if tensor.dtype != torch.int32:
            raise ValueError(f"{name} must be int32, got {tensor.dtype}")
    if block_size < 1 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two, got {block_size}")
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be None or >= 1, got {sliding_window}")
    devices = {t.device for t in (q, k_cache, v_cache, block_tables, query_starts, context_lengths)}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")


def _why_not(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why ``backend`` cannot run paged attention on these tensors, or None when it can."""
    if backend == "torch":
        return None
    if dtype not in FLOATS:
        return f"it runs float32, float16 and bfloat16, not {dtype}"
    if backend == "cpp":
        if device.type != "cpu":
            return f"it runs on CPU tensors, not {device}"
        if not (compiled.extension_imports("steer._C") and hasattr(compiled.extension("steer._C"), "paged_attention")):
            return "steer._C has no paged_attention (a source tree built before it: reinstall)"
        return None
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"it runs on CUDA tensors (or any, under TRITON_INTERPRET=1), not {device}"
    return None


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend that runs paged attention for tensors on ``device``: resolve once per engine,
    not per call. "auto": C++ on the CPU, Triton on a GPU, the torch reference otherwise (and
    for float64); a named backend that cannot run here is a ValueError saying why."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        preferred = "cpp" if device.type == "cpu" else "triton" if device.type == "cuda" else "torch"
        return preferred if _why_not(preferred, device, dtype) is None else "torch"
    reason = _why_not(backend, device, dtype)
    if reason is not None:
        raise ValueError(f"attention backend {backend!r} cannot run here: {reason}")
    return backend


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_starts: torch.Tensor,
    context_lengths: torch.Tensor,
    *,
    block_size: int,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    max_query_length: int | None = None,
    backend: str = "auto",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of q [T, H, D] over each row's paged keys (see the module docstring); returns
    [T, H, D] in q's dtype (``out`` when given).

    block_tables int32 [R, max_blocks]; query_starts int32 [R + 1] (0, then each row's end in q);
    context_lengths int32 [R]. ``max_query_length`` (the most new tokens of a row, known to the
    caller's plan) spares the GPU path a device read; 1 means a decode-only batch.
    """
    check_paged_attention(q, k_cache, v_cache, block_tables, query_starts, context_lengths, block_size, sliding_window)
    name = resolve_backend(backend, q.device, q.dtype)
    if name == "cpp":
        return _cpp(q, k_cache, v_cache, block_tables, query_starts, context_lengths, block_size, scale, sliding_window, soft_cap, out)
    if name == "triton":
        return _triton(
            q, k_cache, v_cache, block_tables, query_starts, context_lengths, block_size, scale,
            sliding_window, soft_cap, max_query_length, out,
        )  # fmt: skip
    result = paged_attention_reference(
        q, k_cache, v_cache, block_tables, query_starts, context_lengths,
        block_size=block_size, scale=scale, sliding_window=sliding_window, soft_cap=soft_cap,
    )  # fmt: skip
    if out is None:
        return result
    out.copy_(result)
    return out


def _inner_contiguous(tensor: torch.Tensor) -> torch.Tensor:
    """The kernels index [n, h, d] with strides but need unit stride along d."""
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()


def _cpp(q, k_cache, v_cache, block_tables, query_starts, context_lengths, block_size, scale, sliding_window, soft_cap, out):
    ext = compiled.extension("steer._C")  # resolve_backend checked the device and dtype
    q, k_cache, v_cache = (_inner_contiguous(t) for t in (q, k_cache, v_cache))
    block_tables = block_tables if block_tables.stride(1) == 1 else block_tables.contiguous()
    query_starts, context_lengths = query_starts.contiguous(), context_lengths.contiguous()
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype)
    ext.paged_attention(
        q.data_ptr(), compiled.dtype_code(q.dtype), q.shape[0], q.shape[1], q.shape[2], q.stride(0), q.stride(1),
        k_cache.data_ptr(), v_cache.data_ptr(), compiled.dtype_code(k_cache.dtype), k_cache.shape[1],
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        block_tables.data_ptr(), block_tables.shape[0], block_tables.shape[1], block_tables.stride(0),
        query_starts.data_ptr(), context_lengths.data_ptr(), block_size, float(scale),
        int(sliding_window or 0), float(soft_cap or 0.0),
        out.data_ptr(), out.stride(0), out.stride(1), torch.get_num_threads(),
    )  # fmt: skip
    return out


def _triton(q, k_cache, v_cache, block_tables, query_starts, context_lengths, block_size, scale, sliding_window, soft_cap, max_query_length, out):
    from steer_kernels import paged_attention as kernels

    window, cap = int(sliding_window or 0), float(soft_cap or 0.0)
    if max_query_length is None:
        max_query_length = int((query_starts[1:] - query_starts[:-1]).max()) if query_starts.shape[0] > 1 else 0
    if max_query_length <= 1 and q.shape[0] == block_tables.shape[0]:  # one query per row: the split-K decode kernel
        return kernels.paged_decode_attention(
            q, k_cache, v_cache, block_tables, context_lengths, block_size=block_size, scale=scale,
            sliding_window=window, soft_cap=cap, out=out,
        )  # fmt: skip
    return kernels.paged_extend_attention(
        q, k_cache, v_cache, block_tables, query_starts, context_lengths, block_size=block_size, scale=scale,
        max_query_length=max_query_length, sliding_window=window, soft_cap=cap, out=out,
    )  # fmt: skip


__all__ = ["paged_attention", "paged_attention_reference", "resolve_backend"]
