"""The eager PyTorch backend: runs anywhere torch runs, and is the fallback of ``backend="auto"``.

It uses the shift-invariant form of the formula (docs/design.md, section 1): each log_softmax only
subtracts a per-row constant, so sum_k w_k log_softmax(z_k) = sum_k w_k z_k - C and a single
batched matrix product over the raw logits replaces K log_softmaxes. Only the combined row is
normalised, and only when log-probabilities are asked for.
"""

from __future__ import annotations

import math

import torch

from steer.ops import validate
from steer.ops.draw import draw, floored_logits

DEVICE_TYPES = ("cpu", "cuda")


def is_available() -> bool:
    return True


def _streams_ready_for_matmul(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """float32 logits where a plain weighted sum is safe: -inf floored in negatively weighted
    streams and streams of weight 0 zeroed (0 * -inf would be NaN inside the matmul)."""
    streams = floored_logits(logits, weights)
    return streams.masked_fill((weights == 0).unsqueeze(-1), 0.0)


def combine(logits, weights, *, normalize: bool, vocab_size: int, plausibility_alpha: float) -> torch.Tensor:
    padded_vocab = logits.shape[-1]
    logits = logits[:, :, :vocab_size]
    validate.check_no_nan_or_posinf(logits)
    streams = _streams_ready_for_matmul(logits, weights)
    scores = torch.bmm(weights.unsqueeze(1), streams).squeeze(1)
    if plausibility_alpha > 0:
        expert = logits[:, 0].float()
        best = expert.max(dim=-1, keepdim=True).values
        scores = scores.masked_fill(expert < best + math.log(plausibility_alpha), -math.inf)
    validate.check_every_row_has_a_token(scores)
    if normalize:
        scores = torch.log_softmax(scores, dim=-1)
    return torch.nn.functional.pad(scores, (0, padded_vocab - vocab_size), value=-math.inf)


def sample(
    logits,
    weights,
    *,
    temperature: float,
    top_k: int,
    top_p: float,
    seeds: torch.Tensor,
    row_keys: torch.Tensor,
    steps: torch.Tensor,
    vocab_size: int,
    plausibility_alpha: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (tokens [B], log-probabilities [B] of those tokens under the sampled distribution).

    The reference sampler over this backend's combine: the filters, then the Gumbel-max draw with
    the shared Philox noise (steer.reference), so its tokens are those of every other backend.
    """
    scores = combine(logits, weights, normalize=False, vocab_size=vocab_size, plausibility_alpha=plausibility_alpha)
    return draw(scores, temperature=temperature, top_k=top_k, top_p=top_p, seeds=seeds, row_keys=row_keys, steps=steps)
