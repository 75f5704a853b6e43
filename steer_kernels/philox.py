"""The counter-based noise of every STEER sampler, in Triton (mirrors csrc/include/steer/philox.h
and steer.reference.philox4x32 / uniform_noise, bit for bit).

    x     = word 0 of Philox4x32-10 with key     = (seed lo, seed hi)
                                   and counter = (token id, step, row_key lo, row_key hi)
    u     = (2 * (x >> 9) + 1) * 2^-24          exactly representable in float32, in (0, 1)
    g     = -log(-log(u))                        standard Gumbel
    token = argmax_v  f(v) + g(v)                an exact draw from softmax(f)

Each round of Philox4x32 (Salmon et al., SC 2011) multiplies two counter words by constants,
keeps both 32-bit halves of each product (``tl.umulhi`` gives the high one) and mixes them with
the key, which is bumped by the Weyl constants between rounds. The noise of token v depends on
(seed, row key, step, v) only: not on the batch row, the chunking of the vocabulary or the
backend.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

# Module-level constants read inside @triton.jit functions must be tl.constexpr.
PHILOX_M0 = tl.constexpr(0xD2511F53)
PHILOX_M1 = tl.constexpr(0xCD9E8D57)
PHILOX_W0 = tl.constexpr(0x9E3779B9)
PHILOX_W1 = tl.constexpr(0xBB67AE85)
PHILOX_ROUNDS = tl.constexpr(10)

# -log(-log(u)) <= -log(-log(1 - 2^-24)) = 16.64 for every u this generator makes: a token whose
# score is more than this below the best perturbed score so far cannot win, whatever its noise.
GUMBEL_MAX = tl.constexpr(17.0)


@triton.jit
def rounding_margin(score):
    """Slack for float32 rounding in ``score + g`` when skipping noise by GUMBEL_MAX (no NaN at -inf)."""
    return tl.minimum(tl.abs(score), 1e30) * 1e-6


@triton.jit
def philox4x32_word0(k0, k1, c0, c1, c2, c3):
    """Word 0 of Philox4x32-10(key=(k0, k1), counter=(c0, c1, c2, c3)); uint32 in and out."""
    for r in tl.static_range(PHILOX_ROUNDS):
        if r > 0:
            k0 = k0 + PHILOX_W0
            k1 = k1 + PHILOX_W1
        hi0 = tl.umulhi(c0, PHILOX_M0)
        lo0 = c0 * PHILOX_M0
        hi1 = tl.umulhi(c2, PHILOX_M1)
        lo1 = c2 * PHILOX_M1
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0


@triton.jit
def uniform(seed, row_key, step, token_ids):
    """u(v) in (0, 1) for int64 scalars seed / row_key / step and an int32 tensor of token ids."""
    x = philox4x32_word0(
        seed.to(tl.uint32),
        (seed >> 32).to(tl.uint32),
        token_ids.to(tl.uint32),
        step.to(tl.uint32),
        row_key.to(tl.uint32),
        (row_key >> 32).to(tl.uint32),
    )
    return ((x >> 9) * 2 + 1).to(tl.float32) * 5.9604644775390625e-08  # * 2^-24


@triton.jit
def gumbel(seed, row_key, step, token_ids):
    """Standard Gumbel noise g(v) = -log(-log(u(v)))."""
    return -tl.log(-tl.log(uniform(seed, row_key, step, token_ids)))


@triton.jit
def _uniform_kernel(seed_ptr, key_ptr, step_ptr, token_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    # One (seed, row key, step) per element here; the samplers use one per row.
    seed = tl.load(seed_ptr + offs, mask=mask, other=0)
    key = tl.load(key_ptr + offs, mask=mask, other=0)
    step = tl.load(step_ptr + offs, mask=mask, other=0)
    token = tl.load(token_ptr + offs, mask=mask, other=0)
    tl.store(out_ptr + offs, uniform(seed, key, step, token), mask=mask)


def uniform_noise(seeds: torch.Tensor, row_keys: torch.Tensor, steps: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """float32 u for broadcastable int64 tensors (token ids < 2^31): the kernel's noise, for tests
    against ``steer.reference.uniform_noise``."""
    seeds, row_keys, steps, token_ids = torch.broadcast_tensors(seeds, row_keys, steps, token_ids)
    flat = [t.reshape(-1).to(torch.int64).contiguous() for t in (seeds, row_keys, steps, token_ids)]
    out = torch.empty(flat[0].shape, dtype=torch.float32, device=flat[0].device)
    n = out.numel()
    if n:
        block = 256
        with torch.cuda.device(out.device) if out.is_cuda else contextlib.nullcontext():
            _uniform_kernel[(triton.cdiv(n, block),)](*flat, out, n, BLOCK=block, enable_fp_fusion=False)
    return out.reshape(seeds.shape)
