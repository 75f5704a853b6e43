"""The Triton backend: the kernels of the top-level ``steer_kernels`` package behind ``steer.ops``.

The kernels read the [B, K, V] logits once in their own dtype and strides (see
steer_kernels/README.md for the design). They run on CUDA tensors; with ``TRITON_INTERPRET=1`` set
before ``steer_kernels`` is first imported, Triton's interpreter runs them on CPU tensors instead
(slow, for tests), and the backend is then usable by name although never picked by "auto".

Triton is imported only when an op runs, so ``import steer`` works without it. The wrappers raise
the shared ValueErrors of steer.ops.errors by reading a 3-entry error buffer back from the device:
that read is the one host synchronisation per call. ``steer_kernels.launch_sample`` is the
synchronisation-free entry point for CUDA graphs.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from steer.ops import errors

DEVICE_TYPES: tuple[str, ...] = ("cuda", "cpu") if os.environ.get("TRITON_INTERPRET") == "1" else ("cuda",)


def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None and importlib.util.find_spec("steer_kernels") is not None


def is_available() -> bool:
    """True iff Triton and steer_kernels import and torch sees a CUDA device."""
    return _triton_importable() and torch.cuda.is_available()


def is_interpreted() -> bool:
    """True iff Triton is importable and TRITON_INTERPRET=1 (kernels run on the CPU, for tests)."""
    return _triton_importable() and os.environ.get("TRITON_INTERPRET") == "1"


def _check_device(logits: torch.Tensor) -> None:
    if logits.device.type not in DEVICE_TYPES:
        raise ValueError(f"the triton backend runs on {DEVICE_TYPES} tensors, got logits on {logits.device}")


def combine(logits, weights, *, normalize: bool, vocab_size: int, plausibility_alpha: float) -> torch.Tensor:
    """Combined STEER scores [B, V] float32 of validated logits [B, K, V] and weights [B, K]."""
    import steer_kernels

    _check_device(logits)
    return steer_kernels.combine(
        logits, weights.to(device=logits.device, dtype=torch.float32), normalize=normalize,
        vocab_size=vocab_size, plausibility_alpha=plausibility_alpha,
    )


def sample_deferred(
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
):
    """(tokens [B], log-probabilities [B], the kernels' errors unread) drawn exactly as
    ``steer.reference.sample`` draws them, without a host synchronisation."""
    import steer_kernels
    from steer_kernels import streams

    _check_device(logits)
    device = logits.device
    tokens = torch.empty(logits.shape[0], dtype=torch.int64, device=device)
    logprobs = torch.empty(logits.shape[0], dtype=torch.float32, device=device)
    err = steer_kernels.new_error_buffer(device)
    steer_kernels.launch_sample(
        logits,
        weights.to(device=device, dtype=torch.float32, non_blocking=True),
        *(values.to(device=device, dtype=torch.int64, non_blocking=True) for values in (seeds, row_keys, steps)),
        tokens,
        logprobs,
        err,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        vocab_size=vocab_size,
        plausibility_alpha=plausibility_alpha,
    )
    return tokens, logprobs, errors.RecordedErrors(err, streams.NO_ERROR, logits.shape[1])


def sample(logits, weights, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [B], log-probabilities [B]); the errors read back (one host synchronisation) and raised."""
    tokens, logprobs, recorded = sample_deferred(logits, weights, **options)
    recorded.raise_if_any()
    return tokens, logprobs
