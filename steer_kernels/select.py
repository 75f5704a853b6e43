"""Top-k / top-p without sorting the vocabulary: order-preserving keys, per-chunk candidate lists,
and the exact threshold search over a stored score row that backs them up.

Keys. A float32 score f maps to an int32 key with the same order (flip the magnitude bits of
negative floats; -0.0 counts as +0.0), and a (score, token id) pair packs into one int64

    packed = key(f) << 32 | (2^31 - 1 - id)

so that a larger packed value means a higher score, and on equal scores a LOWER token id: the
reference's tie rule comes for free with a max or a descending sort. SENTINEL (INT64_MIN) stands
for "no candidate" (-inf scores, masked columns).

Candidates. Each program keeps the NCAND best packed keys of its chunk, sorted descending, in a
running list: a tile with many keys above the list's smallest is reduced by ``tl.topk`` and
bitonic-merged in (O(NCAND log NCAND)); a tile with a few is inserted key by key; a tile with none
is skipped (``update_candidates``). The union of the chunks' lists holds every token
strictly better than the best "last candidate" of a full list, which is what top-k and top-p need.

Exact search. When candidates cannot decide (ties with the k-th score spill out of a list, or the
top-p nucleus is larger than the candidates reach), the second stage walks the stored row f [V]
(float32, written by the first pass: V floats, not K * V logits) and finds the threshold key by a
multi-pivot bisection on the 32-bit key space: each pass evaluates NPIV pivots at once, so
ceil(32 / log2(NPIV + 1)) passes at most (8 with NPIV = 16). ``mass_at_least`` gives, per pivot,
the number of tokens (top-k) or their probability mass (top-p) at or above it.
"""

from __future__ import annotations

import triton
import triton.language as tl

from steer_kernels import philox

SENTINEL = tl.constexpr(-(2**63))
INT32_MIN = tl.constexpr(-(2**31))


@triton.jit
def float_key(f):
    """int32 key with the order of the float32 scores f (-0.0 maps to +0.0's key)."""
    bits = tl.where(f == 0, 0.0, f).to(tl.int32, bitcast=True)
    return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


@triton.jit
def key_float(key):
    """The float32 score of an int32 key (inverse of float_key)."""
    return tl.where(key >= 0, key, key ^ 0x7FFFFFFF).to(tl.float32, bitcast=True)


@triton.jit
def pack(f, ids):
    """int64 (score, token id) keys; SENTINEL where f = -inf."""
    packed = (float_key(f).to(tl.int64) << 32) | (2147483647 - ids).to(tl.int64)
    return tl.where(f > float("-inf"), packed, SENTINEL)


@triton.jit
def packed_key(packed):
    return (packed >> 32).to(tl.int32)


@triton.jit
def packed_score(packed):
    return key_float(packed_key(packed))


@triton.jit
def packed_id(packed):
    return (2147483647 - (packed & 0xFFFFFFFF)).to(tl.int32)


@triton.jit
def merge_candidates(best, packed, NCAND: tl.constexpr):
    """The NCAND largest of (best: sorted descending) and (packed: any order), sorted descending."""
    top = tl.topk(packed, NCAND)
    return tl.bitonic_merge(tl.maximum(best, tl.flip(top)), descending=True)


@triton.jit
def insert_candidate(best, packed_value, NCAND: tl.constexpr):
    """``best`` (sorted descending) with its smallest entry replaced by ``packed_value``, re-sorted:
    a sorted run plus one element is bitonic, so one bitonic merge (log2 NCAND steps) sorts it."""
    best = tl.where(tl.arange(0, NCAND) == NCAND - 1, packed_value, best)
    return tl.bitonic_merge(best, descending=True)


@triton.jit
def update_candidates(best, best_min, packed, NCAND: tl.constexpr, INSERT_LIMIT: tl.constexpr):
    """Merge a tile's packed keys into the running list ``best`` (sorted descending, smallest
    ``best_min``); returns the new (best, best_min).

    Only keys above best_min can enter. The first tiles of a chunk bring many (a ``tl.topk`` of
    the tile and a bitonic merge); later ones few, since the list only improves (for random order
    about NCAND / j keys in the j-th tile): those are inserted one by one, one max-reduction of the
    tile each, which costs far less than a top-k network over the whole tile.
    """
    tile_best = tl.max(packed)
    if tile_best > best_min:
        above = tl.sum((packed > best_min).to(tl.int32))
        if above > INSERT_LIMIT:
            best = merge_candidates(best, packed, NCAND)
            best_min = tl.min(best)
        else:
            while tile_best > best_min:
                best = insert_candidate(best, tile_best, NCAND)
                best_min = tl.min(best)
                packed = tl.where(packed == tile_best, SENTINEL, packed)
                tile_best = tl.max(packed)
    return best, best_min


@triton.jit
def mass_at_least(row_ptr, vocab_size, pivots, base_key, m, MASS: tl.constexpr, BLOCK: tl.constexpr):
    """For each int64 pivot: the sum over tokens v with a finite f(v), key(f(v)) >= base_key and
    key(f(v)) >= pivot of exp(f(v) - m) (MASS) or of 1 (counts, exact in float32 below 2^24)."""
    acc = tl.zeros(pivots.shape, tl.float32)
    for tile in range(0, vocab_size, BLOCK):
        offs = tile + tl.arange(0, BLOCK)
        f = tl.load(row_ptr + offs, mask=offs < vocab_size, other=float("-inf"))
        key = float_key(f)
        valid = (f > float("-inf")) & (key >= base_key)
        if MASS:
            weight = tl.where(valid, tl.exp(f - m), 0.0)
        else:
            weight = tl.where(valid, 1.0, 0.0)
        hit = key.to(tl.int64)[:, None] >= pivots[None, :]
        acc += tl.sum(tl.where(hit, weight[:, None], 0.0), axis=0)
    return acc


@triton.jit
def largest_key_reaching(row_ptr, vocab_size, lo, hi, target, base_key, m,
                         MASS: tl.constexpr, BLOCK: tl.constexpr, NPIV: tl.constexpr):
    """The largest key x in [lo, hi) with mass_at_least(x) >= target, given int64 lo where it holds
    and hi where it does not. The mass only changes at keys of tokens, so x is a token's key."""
    steps = tl.arange(0, NPIV) + 1
    while hi - lo > 1:
        pivots = lo + ((hi - lo) * steps) // (NPIV + 1)
        reached = mass_at_least(row_ptr, vocab_size, pivots, base_key, m, MASS, BLOCK) >= target
        new_lo = tl.max(tl.where(reached, pivots, lo))
        hi = tl.min(tl.where(reached, hi, pivots))
        lo = new_lo
    return lo


@triton.jit
def draw_at_least(row_ptr, vocab_size, threshold_key, m, seed, row_key, step,
                  NOISE: tl.constexpr, BLOCK: tl.constexpr):
    """Over tokens with a finite f and key(f) >= threshold_key: (Gumbel-max winner, its f, the sum
    of exp(f - m)). Without NOISE only the sum is meaningful."""
    best = float("-inf")
    best_id = 0
    best_f = float("-inf")
    total = 0.0
    for tile in range(0, vocab_size, BLOCK):
        offs = tile + tl.arange(0, BLOCK)
        f = tl.load(row_ptr + offs, mask=offs < vocab_size, other=float("-inf"))
        f = tl.where(float_key(f) >= threshold_key, f, float("-inf"))
        total += tl.sum(tl.exp(f - m))
        if NOISE:
            tile_max = tl.max(f)
            if (tile_max > float("-inf")) & (tile_max + philox.GUMBEL_MAX + philox.rounding_margin(tile_max) >= best):
                perturbed = tl.where(f > float("-inf"), f + philox.gumbel(seed, row_key, step, offs), float("-inf"))
                tile_best = tl.max(perturbed)
                if tile_best > best:
                    index = tl.argmax(perturbed, 0)
                    best = tile_best
                    best_id = tile + index
                    best_f = tl.sum(tl.where(tl.arange(0, BLOCK) == index, f, 0.0))
    return best_id, best_f, total
