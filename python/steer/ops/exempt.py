"""Letting the contrast alone decide when a sample ends (``SteerConfig(eos_exempt=True)``).

A negative context is a handful of examples, each followed by its end, so it predicts the end of
an example as well as a real one does: the negative term, which rewards the tokens the negatives
find unlikely, rewards every other token over EOS, and at large eta most samples never end.
Exempting EOS from that term alone does not help (the other tokens keep their reward: measured
in docs/design.md, section 6). So with N the negative streams and t_b row b's EOS, the
exemption gives EOS the probability that the contrast of the other streams gives it, and the
other tokens the rest in STEER's proportions:

    p'(t_b) = softmax(c)(t_b),   c = sum_{k not in N} w_k log_softmax(z_k)   (expert vs base)
    p'(v)   = (1 - p'(t_b)) * p(v) / (1 - p(t_b))     for v != t_b,  p = the STEER distribution

In scores, only t_b's moves, by the log-odds of t_b under c minus its log-odds under STEER's s:

    delta = [c(t_b) - LSE_{v != t_b} c(v)] - [s(t_b) - LSE_{v != t_b} s(v)]

where per-row constants cancel, so both are computed from raw logits (sum_k w_k z_k, as every
backend scores). The backends are unchanged: delta is folded into the logits of the negative
streams, z_k(t_b) += delta / sum_{k in N} w_k for each weighted k in N, which moves s(t_b) by
exactly delta and, under the normalised form, every token of the row alike by the streams'
log-normalisers (cancelled by the final log_softmax). Rows where the expert forbids t_b, or t_b is
the only token left, are unchanged. Cost: one more read of the K logit rows, outside the fused
kernels (the temperature and filters then apply to the moved scores, as to any).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from steer.ops import validate
from steer.ops.draw import floored_logits


def exempt_from_negatives(
    logits: torch.Tensor,
    weights,
    tokens,
    streams: Sequence[int],
    *,
    vocab_size: int | None = None,
    in_place: bool = False,
) -> torch.Tensor:
    """The [B, K, V] logits under which the STEER probability of ``tokens[b]`` is the one the
    streams outside ``streams`` (the contrast) give it, and the other tokens share the rest as
    STEER would (the module docstring has the formula).

    Args:
        logits, weights, vocab_size: as ``steer.ops.sample`` takes them.
        tokens: an int (every row) or an integer tensor [B]: each row's exempt token id (its
            EOS); -1 exempts nothing in that row.
        streams: the indices of the negative streams (e.g. ``range(2, K)`` for the layout of
            ``steer.steer_weights``).
        in_place: write into ``logits`` (which the caller owns) instead of a copy.

    Raises:
        ValueError: on bad shapes, stream indices or token ids.
    """
    weights, vocab_size = validate.prepare_combine_inputs(logits, weights, vocab_size, 0.0)
    batch, num_streams, _ = logits.shape
    negatives = _check_streams(streams, num_streams)
    tokens = _check_tokens(tokens, batch, vocab_size, logits.device)
    out = logits if in_place else logits.clone()
    if not negatives or batch == 0:
        return out
    negative_weight = weights[:, negatives].sum(dim=1)  # -eta (or -eta / (1 - eta) rescaled) per row
    chosen = tokens.clamp(min=0)
    steer, contrast = _raw_scores(logits[:, :, :vocab_size], weights, set(negatives))
    delta = _log_odds(contrast, chosen) - _log_odds(steer, chosen)
    # Masks, not index lists, so that on a GPU nothing here waits for the device (a decode step
    # synchronises once, when it reads its tokens).
    applies = (tokens >= 0) & (negative_weight != 0) & torch.isfinite(delta)
    shift = torch.where(applies, delta, torch.zeros_like(delta)) / torch.where(applies, negative_weight, torch.ones_like(negative_weight)).to(torch.float64)
    rows = torch.arange(batch, device=logits.device)
    for k in negatives:
        moved = applies & (weights[:, k] != 0)
        value = logits[rows, k, chosen].to(torch.float64)
        floored = floored_logits(value.view(-1, 1, 1), weights[:, k : k + 1], torch.float64).view(-1)  # every backend's floor
        out[rows, k, chosen] = torch.where(moved, floored + shift, value).to(out.dtype)
    return out


def _raw_scores(logits: torch.Tensor, weights: torch.Tensor, negatives: set[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_k w_k z_k, the same over the streams outside ``negatives``), float32 [B, V], with the
    floor on negatively weighted streams and w = 0 streams skipped, one stream at a time."""
    steer = torch.zeros(logits.shape[0], logits.shape[2], dtype=torch.float32, device=logits.device)
    contrast = torch.zeros_like(steer)
    for k in range(logits.shape[1]):
        w = weights[:, k : k + 1]
        z = floored_logits(logits[:, k : k + 1], w)[:, 0]
        term = torch.where(w == 0, torch.zeros_like(z), w * z)
        steer += term
        if k not in negatives:
            contrast += term
    return steer, contrast


def _log_odds(scores: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[B]: log p(t_b) - log(1 - p(t_b)) under softmax(scores), i.e. s(t_b) - LSE_{v != t_b} s(v)."""
    at = scores.gather(1, tokens.view(-1, 1))
    others = scores.scatter(1, tokens.view(-1, 1), float("-inf"))
    return (at.squeeze(1) - torch.logsumexp(others, dim=1)).to(torch.float64)


def _check_streams(streams, num_streams: int) -> list[int]:
    try:
        streams = [int(s) for s in streams]
    except (TypeError, ValueError):
        raise ValueError(f"streams must be a sequence of stream indices, got {streams!r}") from None
    if len(set(streams)) != len(streams) or any(not 0 <= s < num_streams for s in streams):
        raise ValueError(f"streams must be distinct indices in [0, {num_streams}), got {streams}")
    return streams


def _check_tokens(tokens, batch: int, vocab_size: int, device) -> torch.Tensor:
    if isinstance(tokens, torch.Tensor):
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.dim() > 1:
            raise ValueError(f"tokens must be an int or an integer tensor [B], got {tokens.dtype} of shape {tuple(tokens.shape)}")
        tokens = tokens.to(device=device, dtype=torch.int64).expand(batch)
    elif isinstance(tokens, bool) or not isinstance(tokens, int):
        raise ValueError(f"tokens must be an int or an integer tensor [B], got {tokens!r}")
    else:
        tokens = torch.full((batch,), tokens, dtype=torch.int64, device=device)
    if tokens.device.type == "cpu" and tokens.numel() and not bool(((tokens >= -1) & (tokens < vocab_size)).all()):
        raise ValueError(f"tokens must be token ids in [0, {vocab_size}) or -1 (none), got {tokens.tolist()}")
    return tokens
