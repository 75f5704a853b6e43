"""What the compiled backends (cpp, cuda) share: loading their extension module and laying out
the float32 buffers their raw-pointer kernels read and write."""

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


def float32_buffers(logits: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, weights, out) as the kernels take them: float32 logits of any strides, weights
    [B, K] with unit stride along K, and a fresh float32 output [B, V] on the logits' device."""
    if logits.dtype != torch.float32:
        logits = logits.float()  # a copy; native half / bfloat16 loads are a later kernel change
    weights = weights.to(device=logits.device, dtype=torch.float32)
    if weights.shape[1] > 1 and weights.stride(1) != 1:
        weights = weights.contiguous()
    out = torch.empty((logits.shape[0], logits.shape[2]), dtype=torch.float32, device=logits.device)
    return logits, weights, out


def combine_arguments(logits, weights, out, *, vocab_size: int, normalize: bool, plausibility_alpha: float) -> tuple:
    """The leading arguments of every compiled ``combine``: pointers, shape and element strides."""
    return (
        logits.data_ptr(), *logits.shape, *logits.stride(),
        weights.data_ptr(), weights.stride(0),  # a row stride of 0 would share one [K] vector
        vocab_size, bool(normalize), float(plausibility_alpha),
        out.data_ptr(), out.stride(0),
    )
