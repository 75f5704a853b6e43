"""Input checks shared by the reference and every backend: shapes, dtypes, weights, NaN / +inf."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from steer.config import check_plausibility_alpha, check_sampling_parameters  # noqa: F401 (re-exported)
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
    on_host = not isinstance(weights, torch.Tensor) or weights.device.type == "cpu"
    # Weights that come from the host are checked there, before they move: the check then costs
    # no device synchronisation (an engine's weights always come from the host).
    weights = torch.as_tensor(weights, dtype=torch.float32, device="cpu" if on_host else device)
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
    return weights.contiguous().to(device)


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


def _per_row_key(name: str, value, batch: int, device, limit: int) -> torch.Tensor:
    """An int in [0, limit) or an integer tensor [] / [B] (used modulo 2^64) as int64 [B] on device.

    Tensor values are not inspected, so a device tensor costs no synchronisation (CUDA graphs)."""
    if isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point or value.dtype in (torch.bool, torch.complex64, torch.complex128):
            raise ValueError(f"{name} must be an integer tensor, got {value.dtype}")
        if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != batch):
            raise ValueError(f"{name} must be a scalar or have shape [B] = [{batch}], got {tuple(value.shape)}")
        return value.to(device=device, dtype=torch.int64).expand(batch)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise ValueError(f"{name} must be an int in [0, {limit}) or an integer tensor, got {value!r}")
    return torch.full((batch,), value, dtype=torch.int64, device=device)


def sampling_keys(batch: int, device, *, seed, generator, row_keys, step) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(seeds, row_keys, steps) as int64 [B] on ``device``: what keys each row's Philox noise.

    No seed: one is drawn from ``generator`` (or torch's global generator, so torch.manual_seed
    makes runs repeatable). No row_keys: each row's position in the batch.
    """
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if seed is None:
        draw_device = generator.device if generator is not None else "cpu"
        seed = int(torch.randint(0, 2**62, (), generator=generator, device=draw_device))
    seeds = _per_row_key("seed", seed, batch, device, 2**63)
    keys = torch.arange(batch, device=device) if row_keys is None else _per_row_key("row_keys", row_keys, batch, device, 2**63)
    steps = _per_row_key("step", step, batch, device, 2**32)
    return seeds, keys, steps
