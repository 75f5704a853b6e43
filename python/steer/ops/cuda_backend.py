"""The CUDA backend: the kernels of ``steer._C_cuda`` behind the signatures of ``steer.ops``.

The kernel (csrc/cuda/combine.cu) runs on the current stream of the tensors' device. It cannot
raise, so it records NaN / +inf / empty-row errors in a 3-entry device buffer that this wrapper
reads back; that read synchronises with the kernel, which is the price of raising the same
ValueErrors as every other backend (steer.ops.errors).
"""

from __future__ import annotations

import torch

from steer.ops import compiled, errors

DEVICE_TYPES = ("cuda",)

_NO_ERROR = -1  # err entries start as all-ones bits (UINT64_MAX), which int64 reads as -1


def is_available() -> bool:
    """True iff ``steer._C_cuda`` was built and imports, and torch sees a CUDA device."""
    return compiled.extension_imports("steer._C_cuda") and torch.cuda.is_available()


def combine(
    logits: torch.Tensor, weights: torch.Tensor, *, normalize: bool, vocab_size: int, plausibility_alpha: float
) -> torch.Tensor:
    """Combined STEER scores [B, V] float32 of validated CUDA logits [B, K, V] and weights [B, K]."""
    ext = compiled.extension("steer._C_cuda")
    if logits.device.type != "cuda":
        raise ValueError(f"the cuda backend runs on CUDA tensors, got logits on {logits.device}")
    device = logits.device
    logits, weights, out = compiled.float32_buffers(logits, weights)
    num_streams = logits.shape[1]
    err = torch.full((3,), _NO_ERROR, dtype=torch.int64, device=device)
    arguments = compiled.combine_arguments(
        logits, weights, out, vocab_size=vocab_size, normalize=normalize, plausibility_alpha=plausibility_alpha
    )
    with torch.cuda.device(device):
        ext.combine(*arguments, err.data_ptr(), torch.cuda.current_stream(device).cuda_stream)
    nan_key, posinf_key, empty_row = err.tolist()  # keys are row * K + stream
    if nan_key != _NO_ERROR:
        raise errors.nan_in_logits(*divmod(nan_key, num_streams))
    if posinf_key != _NO_ERROR:
        raise errors.posinf_in_logits(*divmod(posinf_key, num_streams))
    if empty_row != _NO_ERROR:
        raise errors.no_finite_token(empty_row)
    return out
