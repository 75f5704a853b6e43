"""Input checks shared by the reference and every backend: shapes, dtypes, weights, NaN / +inf."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from steer.config import check_plausibility_alpha, check_sampling_parameters
from steer.ops import errors

LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_logits_shape(logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor of shape [B, K, V], got {type(logits).__name__}")
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape [B, K, V] (batch, streams, vocabulary), got {tuple(logits.shape)}")
    if logits.dtype not in LOGIT_DTYPES:
        raise ValueError(f"logits must be float32, float16 or bfloat16, got {logits.dtype}")
    _, num_streams, vocab = logits.shape
    if num_streams < 1 or vocab < 1:
        raise ValueError(f"logits need at least one stream and one token, got shape {tuple(logits.shape)}")


def per_row_weights(weights: torch.Tensor | Sequence[float], batch: int, num_streams: int, device) -> torch.Tensor:
    """Return the weights as a float32 [B, K] tensor on ``device``, from a [K] or [B, K] input."""
    weights = torch.as_tensor(weights, dtype=torch.float32, device=device)
    if weights.dim() == 1:
        if weights.shape[0] != num_streams:
            raise ValueError(f"weights has {weights.shape[0]} entries but logits have K={num_streams} streams")
        weights = weights.expand(batch, num_streams)
    elif weights.dim() == 2:
        if tuple(weights.shape) != (batch, num_streams):
            raise ValueError(f"per-row weights must have shape [B, K] = {(batch, num_streams)}, got {tuple(weights.shape)}")
    else:
        raise ValueError(f"weights must have shape [K] or [B, K], got {tuple(weights.shape)}")
    if not torch.isfinite(weights).all():
        raise ValueError("weights must be finite")
    return weights.contiguous()


def resolve_vocab_size(vocab_size: int | None, padded_vocab: int) -> int:
    """The number of real tokens: ids at or beyond it are LM-head padding and never sampled."""
    if vocab_size is None:
        return padded_vocab
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not (1 <= vocab_size <= padded_vocab):
        raise ValueError(f"vocab_size must be an int in [1, {padded_vocab}] (the logits' last dimension), got {vocab_size!r}")
    return vocab_size


def check_no_nan_or_posinf(logits: torch.Tensor) -> None:
    """Raise the shared ValueError for the first NaN or +inf, naming its row and stream."""
    bad_nan = torch.isnan(logits).any(dim=-1)
    if bad_nan.any():
        row, stream = (int(i) for i in bad_nan.nonzero()[0])
        raise errors.nan_in_logits(row, stream)
    bad_posinf = torch.isposinf(logits).any(dim=-1)
    if bad_posinf.any():
        row, stream = (int(i) for i in bad_posinf.nonzero()[0])
        raise errors.posinf_in_logits(row, stream)


def check_every_row_has_a_token(scores: torch.Tensor) -> None:
    empty = torch.isneginf(scores).all(dim=-1)
    if empty.any():
        raise errors.no_finite_token(int(empty.nonzero()[0, 0]))


def prepare_combine_inputs(logits, weights, vocab_size, plausibility_alpha):
    """Validate the arguments every ``combine`` implementation takes; return (weights [B, K], vocab_size)."""
    check_logits_shape(logits)
    check_plausibility_alpha(plausibility_alpha)
    batch, num_streams, padded_vocab = logits.shape
    return per_row_weights(weights, batch, num_streams, logits.device), resolve_vocab_size(vocab_size, padded_vocab)


def check_sampler_arguments(temperature, top_k, top_p, seed, generator) -> None:
    check_sampling_parameters(temperature, top_k, top_p)
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
