"""What every backend's sampler shares, in plain torch: the -inf floor of negatively weighted
streams, the temperature / top-k / top-p filters, and the counter-based Gumbel-max draw with
Philox4x32-10 noise (the definitions are in ``steer.reference``'s docstring; the reference
re-exports these, and the torch backend samples with them).
"""

from __future__ import annotations

import math

import torch

NEG_INF_FLOOR = -1.0e4


def floored_logits(logits: torch.Tensor, weights: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Upcast [B, K, V] logits and replace -inf by NEG_INF_FLOOR in negatively weighted streams."""
    logits = logits.to(dtype)
    negative = (weights < 0).unsqueeze(-1)
    return torch.where(negative & torch.isneginf(logits), torch.full_like(logits, NEG_INF_FLOOR), logits)


def top_k_mask(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    """Boolean [B, V]: the top_k highest scores of each row; ties with the k-th are all kept."""
    if top_k == 0 or top_k >= scores.shape[-1]:
        return torch.ones_like(scores, dtype=torch.bool)
    kth_best = torch.topk(scores, top_k, dim=-1).values[:, -1:]
    return scores >= kth_best


def top_p_mask(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Boolean [B, V]: the smallest set of most probable tokens whose probability reaches top_p.

    A token is kept when the probability mass of the tokens strictly more probable than it in the
    sorted order is below top_p; ties with the least probable kept token are all kept.
    """
    if top_p >= 1.0:
        return torch.ones_like(scores, dtype=torch.bool)
    probs = torch.softmax(scores, dim=-1)
    sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    kept_count = (mass_before < top_p).sum(dim=-1, keepdim=True).clamp(min=1)
    smallest_kept = sorted_probs.gather(-1, kept_count - 1)
    return probs >= smallest_kept


def filter_scores(scores: torch.Tensor, *, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Apply temperature, then top-k, then top-p (the order of Hugging Face's warpers).

    Returns the scores of the distribution that is sampled from, with removed tokens at -inf.
    temperature=0 (greedy) filters at temperature 1, which keeps the argmax.
    """
    if temperature > 0:
        scores = scores / temperature
    scores = scores.masked_fill(~top_k_mask(scores, top_k), -math.inf)
    return scores.masked_fill(~top_p_mask(scores, top_p), -math.inf)


# Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011), the
# generator of Random123, cuRAND and Triton. Every backend implements these same rounds; the
# known-answer vectors of Random123 are in the tests.
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
PHILOX_ROUNDS = 10
_U32 = 0xFFFFFFFF


def _mulhilo32(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit halves of a * b for uint32 values held in int64, without int64 overflow."""
    high_part, low_part = a * (b >> 16), a * (b & 0xFFFF)  # each < 2^48
    low = (low_part + ((high_part & 0xFFFF) << 16)) & _U32
    high = (high_part + (low_part >> 16)) >> 16
    return high, low


def philox4x32(key: tuple, counter: tuple) -> list[torch.Tensor]:
    """The four 32-bit output words of Philox4x32-10 (uint32 values in int64 tensors)."""
    k0, k1 = (torch.as_tensor(k, dtype=torch.int64) & _U32 for k in key)
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) & _U32 for c in counter)
    for round_index in range(PHILOX_ROUNDS):
        if round_index:
            k0, k1 = (k0 + PHILOX_W0) & _U32, (k1 + PHILOX_W1) & _U32
        high0, low0 = _mulhilo32(c0, PHILOX_M0)
        high1, low1 = _mulhilo32(c2, PHILOX_M1)
        c0, c1, c2, c3 = high1 ^ c1 ^ k0, low1, high0 ^ c3 ^ k1, low0
    return [c0, c1, c2, c3]


def uniform_noise(seeds, row_keys, steps, token_ids) -> torch.Tensor:
    """float32 u in (0, 1), never 0 or 1, for broadcastable int64 seeds / row keys / steps / tokens.

    u = (2 * (x >> 9) + 1) * 2^-24 with x the first Philox word: exactly representable in float32,
    so every backend gets bit-identical u.
    """
    seeds, row_keys = torch.as_tensor(seeds), torch.as_tensor(row_keys)
    word = philox4x32((seeds, seeds >> 32), (token_ids, steps, row_keys, row_keys >> 32))[0]
    return ((word >> 9) * 2 + 1).to(torch.float32) * 2.0**-24


def gumbel_noise(u: torch.Tensor) -> torch.Tensor:
    return -torch.log(-torch.log(u))


def perturbed_argmax(filtered: torch.Tensor, seeds, row_keys, steps) -> torch.Tensor:
    """argmax_v filtered(v) + g(v) per row: an exact draw from softmax(filtered) (Gumbel-max).

    Noise is computed only where filtered is finite (after top-k, a handful of tokens per row).
    seeds, row_keys, steps: int64 [B].
    """
    rows, tokens = torch.isfinite(filtered).nonzero(as_tuple=True)
    u = uniform_noise(seeds[rows], row_keys[rows], steps[rows], tokens)
    perturbed = torch.full_like(filtered, -math.inf)
    perturbed[rows, tokens] = filtered[rows, tokens] + gumbel_noise(u).to(filtered.dtype)
    return perturbed.argmax(dim=-1)


def draw(scores: torch.Tensor, *, temperature, top_k, top_p, seeds, row_keys, steps) -> tuple[torch.Tensor, torch.Tensor]:
    """Filter combined scores [B, V] and draw (tokens, log-probabilities) from them.

    temperature=0 is greedy; its log-probabilities are those of the filtered distribution at T=1.
    """
    filtered = filter_scores(scores, temperature=temperature, top_k=top_k, top_p=top_p)
    if temperature == 0:
        tokens = scores.argmax(dim=-1)
    else:
        tokens = perturbed_argmax(filtered, seeds, row_keys, steps)
    logprobs = torch.log_softmax(filtered, dim=-1).gather(1, tokens.unsqueeze(1)).squeeze(1)
    return tokens, logprobs
