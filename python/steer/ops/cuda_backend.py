"""The CUDA backend: the kernels of ``steer._C_cuda`` behind the signatures of ``steer.ops``.

The kernels (csrc/cuda/kernels.cuh) read float32, float16 and bfloat16 logits natively, with any
strides, on the current stream of the tensors' device; every row's vocabulary is split over
several blocks, so a batch of one row still fills the GPU. ``sample`` is one fused pass over the
K * V logits plus a small per-row merge (top-k and top-p without sorting the vocabulary); seeds,
row keys and steps stay in device memory.

Kernels cannot raise, so they record NaN / +inf / empty-row errors in a 3-entry device buffer
that this wrapper reads back to raise the same ValueErrors as every other backend
(steer.ops.errors). That read synchronises with the kernels; while a CUDA graph is being
captured it is skipped (errors cannot be raised from a replay), so capture the C++ entry points
or validate inputs beforehand if a replayed sampler must report bad logits.
"""

from __future__ import annotations

import torch

from steer.ops import compiled, errors

DEVICE_TYPES = ("cuda",)

_NO_ERROR = -1  # err entries start as all-ones bits (UINT64_MAX), which int64 reads as -1
def is_available() -> bool:
    """True iff ``steer._C_cuda`` was built and imports, and torch sees a CUDA device."""
    return compiled.extension_imports("steer._C_cuda") and torch.cuda.is_available()


def _device_of(logits: torch.Tensor) -> torch.device:
    if logits.device.type != "cuda":
        raise ValueError(f"the cuda backend runs on CUDA tensors, got logits on {logits.device}")
    return logits.device


def _recorded(err: torch.Tensor, num_streams: int) -> errors.RecordedErrors:
    return errors.RecordedErrors(err, _NO_ERROR, num_streams)


def _raise_recorded_errors(err: torch.Tensor, num_streams: int) -> None:
    if torch.cuda.is_current_stream_capturing():
        return
    _recorded(err, num_streams).raise_if_any()


def combine(
    logits: torch.Tensor, weights: torch.Tensor, *, normalize: bool, vocab_size: int, plausibility_alpha: float
) -> torch.Tensor:
    """Combined STEER scores [B, V] float32 of validated CUDA logits [B, K, V] and weights [B, K]."""
    ext = compiled.extension("steer._C_cuda")
    device = _device_of(logits)
    batch, num_streams, vocab = logits.shape
    weights = compiled.kernel_weights(weights, device)
    out = torch.empty((batch, vocab), dtype=torch.float32, device=device)
    workspace = torch.empty(
        ext.combine_workspace_bytes(batch, vocab, float(plausibility_alpha)), dtype=torch.uint8, device=device
    )
    err = torch.full((3,), _NO_ERROR, dtype=torch.int64, device=device)
    with torch.cuda.device(device):
        ext.combine_typed(
            logits.data_ptr(), compiled.dtype_code(logits.dtype), batch, num_streams, vocab, *logits.stride(),
            weights.data_ptr(), weights.stride(0), vocab_size, bool(normalize), float(plausibility_alpha),
            out.data_ptr(), out.stride(0), workspace.data_ptr(), workspace.numel(), err.data_ptr(),
            torch.cuda.current_stream(device).cuda_stream,
        )  # fmt: skip
    _raise_recorded_errors(err, num_streams)
    return out


def _row_values(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """int64 [B] on device, as the kernels read it (element b at b * stride, stride 0 allowed)."""
    return values.to(device=device, dtype=torch.int64)


def _stride(values: torch.Tensor) -> int:
    return values.stride(0) if values.dim() == 1 and values.shape[0] > 1 else 0


def sample_deferred(
    logits: torch.Tensor,
    weights: torch.Tensor,
    *,
    temperature: float,
    top_k: int,
    top_p: float,
    seeds: torch.Tensor,
    row_keys: torch.Tensor,
    steps: torch.Tensor,
    vocab_size: int,
    plausibility_alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, errors.RecordedErrors]:
    """(tokens [B] int64, their log-probabilities [B] float32, the kernel's errors unread) drawn by
    the fused CUDA sampler, without a host synchronisation.

    The same tokens as ``steer.reference.sample`` (same Philox noise, same filters): see
    steer/sample_cuda.h and csrc/cuda/kernels.cuh.
    """
    ext = compiled.extension("steer._C_cuda")
    device = _device_of(logits)
    batch, num_streams, vocab = logits.shape
    weights = compiled.kernel_weights(weights, device)
    seeds, row_keys, steps = (_row_values(v, device) for v in (seeds, row_keys, steps))
    top_k = min(int(top_k), vocab_size)  # top_k >= vocab_size is off, and stays within int64
    temperature, top_p, alpha = float(temperature), float(top_p), float(plausibility_alpha)
    tokens = torch.empty(batch, dtype=torch.int64, device=device)
    logprobs = torch.empty(batch, dtype=torch.float32, device=device)
    workspace = torch.empty(
        ext.sample_workspace_bytes(batch, vocab_size, temperature, top_k, top_p, alpha), dtype=torch.uint8, device=device
    )
    err = torch.full((3,), _NO_ERROR, dtype=torch.int64, device=device)
    with torch.cuda.device(device):
        ext.sample(
            logits.data_ptr(), compiled.dtype_code(logits.dtype), batch, num_streams, vocab, *logits.stride(),
            weights.data_ptr(), weights.stride(0), vocab_size, alpha, temperature, top_k, top_p,
            seeds.data_ptr(), _stride(seeds), row_keys.data_ptr(), _stride(row_keys), steps.data_ptr(), _stride(steps),
            tokens.data_ptr(), logprobs.data_ptr(), workspace.data_ptr(), workspace.numel(), err.data_ptr(),
            torch.cuda.current_stream(device).cuda_stream,
        )  # fmt: skip
    return tokens, logprobs, _recorded(err, num_streams)


def sample(logits: torch.Tensor, weights: torch.Tensor, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """``sample_deferred``, then its errors read back (one host synchronisation) and raised."""
    tokens, logprobs, recorded = sample_deferred(logits, weights, **options)
    if not torch.cuda.is_current_stream_capturing():
        recorded.raise_if_any()
    return tokens, logprobs
