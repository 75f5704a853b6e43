"""What the compiled backends (cpp, cuda) share: loading their extension module and laying out
the buffers their raw-pointer kernels read and write."""

from __future__ import annotations

import importlib
from types import ModuleType

import torch


def extension(name: str) -> ModuleType:
    return importlib.import_module(name)


def extension_imports(name: str) -> bool:
    try:
        extension(name)
    except ImportError:
        return False
    return True


# The dtype codes of the kernels (steer::DType in csrc/include/steer/combine.h, steer_dtype in steer.h).
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def dtype_code(dtype: torch.dtype) -> int:
    return DTYPE_CODES[dtype]


def native_buffers(logits: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, weights, out) as the kernels take them: the logits as they are (float32, float16 or
    bfloat16, any strides: the kernels convert on load, so half precision is never copied), float32
    weights [B, K] with unit stride along K, and a fresh float32 output [B, V]."""
    if logits.dtype not in DTYPE_CODES:
        raise ValueError(f"logits must be float32, float16 or bfloat16, got {logits.dtype}")
    out = torch.empty((logits.shape[0], logits.shape[2]), dtype=torch.float32, device=logits.device)
    return logits, kernel_weights(weights, logits.device), out


def kernel_weights(weights: torch.Tensor, device) -> torch.Tensor:
    """float32 weights [B, K] on ``device`` with unit stride along K, as every kernel reads them."""
    # non_blocking: a host tensor's copy to a GPU does not wait for the work queued there.
    weights = weights.to(device=device, dtype=torch.float32, non_blocking=True)
    if weights.shape[1] > 1 and weights.stride(1) != 1:
        weights = weights.contiguous()
    return weights


def per_row_int64(values: torch.Tensor) -> torch.Tensor:
    """An int64 [B] tensor with unit stride (seeds, row keys and steps may arrive expanded)."""
    return values.to(torch.int64).contiguous()


def combine_arguments(logits, weights, out, *, vocab_size: int, normalize: bool, plausibility_alpha: float) -> tuple:
    """The leading arguments of every compiled ``combine``: pointers, shape and element strides."""
    return (
        logits.data_ptr(), *logits.shape, *logits.stride(),
        weights.data_ptr(), weights.stride(0),  # a row stride of 0 would share one [K] vector
        vocab_size, bool(normalize), float(plausibility_alpha),
        out.data_ptr(), out.stride(0),
    )
