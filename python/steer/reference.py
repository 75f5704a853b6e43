"""The STEER formula in plain PyTorch: the oracle every kernel, the drop-in and the engine are tested against.

For a batch row with K streams of logits z_k and weights w_k (docs/design.md, section 1):

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
  * exempt = (tokens [B], negative streams N): row b's token tokens[b] (-1: none) gets the
    probability the contrast of the streams outside N gives it, and the other tokens share the
    rest in STEER's proportions (``SteerConfig(eos_exempt=True)``: the EOS token decided by expert
    vs base alone; steer.ops.exempt folds it into the logits for every backend).
"""

from __future__ import annotations

import math

import torch

from steer.ops import validate
from steer.ops.draw import (  # noqa: F401 (the shared draw is part of the reference)
    NEG_INF_FLOOR,
    PHILOX_M0,
    PHILOX_M1,
    PHILOX_ROUNDS,
    PHILOX_W0,
    PHILOX_W1,
    draw,
    filter_scores,
    floored_logits,
    gumbel_noise,
    perturbed_argmax,
    philox4x32,
    top_k_mask,
    top_p_mask,
    uniform_noise,
)

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


def with_exempt_token(scores: torch.Tensor, streams: torch.Tensor, weights: torch.Tensor, exempt) -> torch.Tensor:
    """``scores`` [B, V] (the STEER scores s, up to a per-row constant) with each row's exempt
    token t given the contrast's probability, literally: p'(t) = softmax(c)(t) where
    c = sum_{k not in N} w_k log_softmax(z_k), and the other tokens share 1 - p'(t) in the
    proportions of softmax(s), i.e. s'(t) = log p'(t) - log(1 - p'(t)) + log sum_{v != t} e^s(v).
    ``streams``: the floored [B, K, V] logits; rows where t is forbidden or alone are unchanged."""
    if exempt is None:
        return scores
    tokens, negative = exempt
    batch = scores.shape[0]
    tokens = torch.as_tensor(tokens, dtype=torch.long, device=scores.device).expand(batch)
    outside = torch.ones(streams.shape[1], dtype=torch.bool, device=scores.device)
    outside[list(negative)] = False
    contrast = weighted_sum(torch.log_softmax(streams, dim=-1), torch.where(outside, weights, torch.zeros_like(weights)))
    scores = scores.clone()
    for row in range(batch):
        t = int(tokens[row])
        has_negatives = bool((weights[row, ~outside] != 0).any())
        if t < 0 or not has_negatives:
            continue
        p_exempt = torch.softmax(contrast[row], dim=-1)[t]
        rest = torch.cat([scores[row, :t], scores[row, t + 1 :]])
        new = torch.log(p_exempt) - torch.log1p(-p_exempt) + torch.logsumexp(rest, dim=0)
        if torch.isfinite(new) and torch.isfinite(scores[row, t]):
            scores[row, t] = new
    return scores


def combine(
    logits: torch.Tensor,
    weights,
    *,
    normalize: bool = True,
    vocab_size: int | None = None,
    plausibility_alpha: float = 0.0,
    dtype: torch.dtype = torch.float32,
    exempt=None,
) -> torch.Tensor:
    """The combined STEER scores [B, V] of [B, K, V] logits, literally as the formula reads.

    normalize=True: log_softmax(sum_k w_k log_softmax(z_k)), the log-probabilities.
    normalize=False: sum_k w_k z_k, equal to the above up to a per-row constant.
    """
    weights, vocab_size = validate.prepare_combine_inputs(logits, weights, vocab_size, plausibility_alpha)
    validate.check_no_nan_or_posinf(logits[:, :, :vocab_size])
    batch, _, padded_vocab = logits.shape
    streams = floored_logits(logits[:, :, :vocab_size], weights, dtype)
    floored = streams
    if normalize:
        streams = torch.log_softmax(streams, dim=-1)
    scores = with_exempt_token(weighted_sum(streams, weights), floored, weights, exempt)
    if plausibility_alpha > 0:
        keep = plausible_tokens(logits[:, 0, :vocab_size].to(dtype), plausibility_alpha)
        scores = scores.masked_fill(~keep, -math.inf)
    validate.check_every_row_has_a_token(scores)
    if normalize:
        scores = torch.log_softmax(scores, dim=-1)
    padding = torch.full((batch, padded_vocab - vocab_size), -math.inf, dtype=dtype, device=logits.device)
    return torch.cat([scores, padding], dim=-1)


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
    exempt=None,
) -> torch.Tensor:
    """The exact distribution [B, V] that ``steer.sample`` draws from (one-hot at the argmax if T=0)."""
    validate.check_sampling_parameters(temperature, top_k, top_p)
    scores = combine(logits, weights, vocab_size=vocab_size, plausibility_alpha=plausibility_alpha, dtype=dtype, exempt=exempt)
    if temperature == 0:
        return torch.nn.functional.one_hot(scores.argmax(dim=-1), scores.shape[-1]).to(dtype)
    return torch.softmax(filter_scores(scores, temperature=temperature, top_k=top_k, top_p=top_p), dim=-1)


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
    exempt=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [B], their log-probabilities [B]) as every backend must draw them."""
    scores = combine(logits, weights, normalize=False, vocab_size=vocab_size, plausibility_alpha=plausibility_alpha, exempt=exempt)
    return draw(scores, temperature=temperature, top_k=top_k, top_p=top_p, seeds=seeds, row_keys=row_keys, steps=steps)


def greedy(logits: torch.Tensor, weights, *, vocab_size: int | None = None, plausibility_alpha: float = 0.0, exempt=None) -> torch.Tensor:
    """The argmax token of each row's combined score (lowest id on ties)."""
    scores = combine(logits, weights, vocab_size=vocab_size, plausibility_alpha=plausibility_alpha, exempt=exempt)
    return scores.argmax(dim=-1)
