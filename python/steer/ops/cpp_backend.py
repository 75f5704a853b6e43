"""The C++ CPU backend: the OpenMP kernels of ``steer._C`` behind the signatures of ``steer.ops``.

The kernel (csrc/cpu/combine.cpp) reads each logit once, multiply-adds the K streams in
L1-sized tiles and fuses the logsumexp into the same pass, threaded over rows and, for small
batches, vocabulary chunks. This wrapper only converts dtypes, allocates the output, passes
pointers and element strides, and turns status codes into the shared errors of
``steer.ops.errors`` so a bad input reads the same on every backend.
"""

from __future__ import annotations

import torch

from steer.ops import compiled, errors

DEVICE_TYPES = ("cpu",)


def is_available() -> bool:
    """True iff the compiled module ``steer._C`` imports (it is built by every install)."""
    return compiled.extension_imports("steer._C")


def combine(
    logits: torch.Tensor, weights: torch.Tensor, *, normalize: bool, vocab_size: int, plausibility_alpha: float
) -> torch.Tensor:
    """Combined STEER scores [B, V] float32 of validated CPU logits [B, K, V] and weights [B, K]."""
    ext = compiled.extension("steer._C")
    if logits.device.type != "cpu" or weights.device.type != "cpu":
        raise ValueError(f"the cpp backend runs on CPU tensors, got logits on {logits.device}, weights on {weights.device}")
    logits, weights, out = compiled.float32_buffers(logits, weights)
    arguments = compiled.combine_arguments(
        logits, weights, out, vocab_size=vocab_size, normalize=normalize, plausibility_alpha=plausibility_alpha
    )
    # The thread budget the user gave torch applies to the kernel too.
    status, row, stream = ext.combine(*arguments, torch.get_num_threads())
    if status == ext.STEER_ERR_NAN:
        raise errors.nan_in_logits(row, stream)
    if status == ext.STEER_ERR_POSINF:
        raise errors.posinf_in_logits(row, stream)
    if status == ext.STEER_ERR_EMPTY_ROW:
        raise errors.no_finite_token(row)
    if status != ext.STEER_OK:
        raise RuntimeError(f"steer._C.combine returned unknown status {status}")
    return out
