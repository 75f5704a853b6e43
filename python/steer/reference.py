"""The STEER formula in plain PyTorch: the oracle every kernel, the drop-in and the engine are tested against.

For a batch row with K streams of logits z_k and weights w_k (DESIGN.md section 2):

    s(v) = sum_k w_k * log_softmax(z_k)(v)          (the combined log-score)
    p(v) = softmax(filter(s / T))(v)                (the distribution a token is drawn from)

where filter keeps the top_k highest scores, then the top_p nucleus. Written literally, one
log_softmax per stream, because short and obviously right beats fast here.

A token is drawn by the Gumbel-max trick with counter-based noise, identical in every backend:

    token = argmax_v  filter(s / T)(v) + g(v),   g(v) = -log(-log(u(v)))
    u(v)  = uniform from Philox4x32-10, key = seed, counter = (v, step, row_key_lo, row_key_hi)

so a row's tokens depend on its (seed, row key, step) and never on the batch around it.

Edge cases, which every backend must reproduce:
  * NaN or +inf in any stream -> ValueError naming the row and stream (padding columns at or
    beyond vocab_size are never read).
  * -inf in a stream with w > 0 (e.g. the expert forbids a token) -> s(v) = -inf, never sampled.
  * -inf in a stream with w < 0 -> the raw logit is replaced by NEG_INF_FLOOR before anything else,
    so -w * (-inf) can never become +inf or NaN. The floor is on the raw logit (not the
    log-probability) so that the shift-invariant form sum_k w_k z_k stays exact.
  * Streams with w == 0 contribute nothing (0 * -inf would be NaN).
  * Columns at or beyond vocab_size (padded LM-head rows) are -inf and never sampled.
  * plausibility_alpha > 0 keeps only v with lE(v) >= log(alpha) + max lE, stream 0 being the expert
    (its raw logits, before any floor).
  * A row left with no finite score -> ValueError.
"""

from __future__ import annotations

import math

import torch

from steer.ops import validate

NEG_INF_FLOOR = -1.0e4


def floored_logits(logits: torch.Tensor, weights: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Upcast [B, K, V] logits and replace -inf by NEG_INF_FLOOR in negatively weighted streams."""
    logits = logits.to(dtype)
    negative = (weights < 0).unsqueeze(-1)
    return torch.where(negative & torch.isneginf(logits), torch.full_like(logits, NEG_INF_FLOOR), logits)


def weighted_sum(streams: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_k w_k * streams[:, k], skipping w == 0 so that 0 * -inf never makes a NaN."""
    weights = weights.to(streams.dtype).unsqueeze(-1)
    terms = torch.where(weights == 0, torch.zeros_like(streams), weights * streams)
    return terms.sum(dim=1)


def plausible_tokens(expert_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """Boolean [B, V]: tokens whose expert log-probability is within log(alpha) of the best one."""
    expert_logprobs = torch.log_softmax(expert_logits, dim=-1)
    best = expert_logprobs.max(dim=-1, keepdim=True).values
    return expert_logprobs >= best + math.log(alpha)


def combine(
    logits: torch.Tensor,
    weights,
    *,
    normalize: bool = True,
    vocab_size: int | None = None,
    plausibility_alpha: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The combined STEER scores [B, V] of [B, K, V] logits, literally as the formula reads.

    normalize=True: log_softmax(sum_k w_k log_softmax(z_k)), the log-probabilities.
    normalize=False: sum_k w_k z_k, equal to the above up to a per-row constant.
    """
    weights, vocab_size = validate.prepare_combine_inputs(logits, weights, vocab_size, plausibility_alpha)
    validate.check_no_nan_or_posinf(logits[:, :, :vocab_size])
    batch, _, padded_vocab = logits.shape
    streams = floored_logits(logits[:, :, :vocab_size], weights, dtype)
    if normalize:
        streams = torch.log_softmax(streams, dim=-1)
    scores = weighted_sum(streams, weights)
    if plausibility_alpha > 0:
        keep = plausible_tokens(logits[:, 0, :vocab_size].to(dtype), plausibility_alpha)
        scores = scores.masked_fill(~keep, -math.inf)
    validate.check_every_row_has_a_token(scores)
    if normalize:
        scores = torch.log_softmax(scores, dim=-1)
    padding = torch.full((batch, padded_vocab - vocab_size), -math.inf, dtype=dtype, device=logits.device)
    return torch.cat([scores, padding], dim=-1)


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


def probabilities(
    logits: torch.Tensor,
    weights,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    vocab_size: int | None = None,
    plausibility_alpha: float = 0.0,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """The exact distribution [B, V] that ``steer.sample`` draws from (one-hot at the argmax if T=0)."""
    validate.check_sampling_parameters(temperature, top_k, top_p)
    scores = combine(logits, weights, vocab_size=vocab_size, plausibility_alpha=plausibility_alpha, dtype=dtype)
    if temperature == 0:
        return torch.nn.functional.one_hot(scores.argmax(dim=-1), scores.shape[-1]).to(dtype)
    return torch.softmax(filter_scores(scores, temperature=temperature, top_k=top_k, top_p=top_p), dim=-1)


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


def sample(
    logits: torch.Tensor,
    weights,
    *,
    seeds: torch.Tensor,
    row_keys: torch.Tensor,
    steps: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    vocab_size: int | None = None,
    plausibility_alpha: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [B], their log-probabilities [B]) as every backend must draw them."""
    scores = combine(logits, weights, normalize=False, vocab_size=vocab_size, plausibility_alpha=plausibility_alpha)
    return draw(scores, temperature=temperature, top_k=top_k, top_p=top_p, seeds=seeds, row_keys=row_keys, steps=steps)


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


def greedy(logits: torch.Tensor, weights, *, vocab_size: int | None = None, plausibility_alpha: float = 0.0) -> torch.Tensor:
    """The argmax token of each row's combined score (lowest id on ties)."""
    scores = combine(logits, weights, vocab_size=vocab_size, plausibility_alpha=plausibility_alpha)
    return scores.argmax(dim=-1)
