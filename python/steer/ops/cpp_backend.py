"""The C++ CPU backend: the OpenMP kernels of ``steer._C`` behind the signatures of ``steer.ops``.

The kernels (csrc/cpu/combine.cpp, csrc/cpu/sample.cpp) read each logit once, float32, float16 or
bfloat16 alike (half types are converted on load, never copied), multiply-add the K streams in
L1-sized tiles and keep what the op needs from each tile while it is hot: the logsumexp for
``combine``; for ``sample`` the top-k candidates, the row for top-p, or the Gumbel race itself.
They thread over rows and, for small batches, vocabulary chunks. This wrapper only allocates
outputs, passes pointers and element strides, and turns status codes into the shared errors of
``steer.ops.errors`` so a bad input reads the same on every backend.
"""

from __future__ import annotations

import torch

from steer.ops import compiled, errors

DEVICE_TYPES = ("cpu",)


def is_available() -> bool:
    """True iff the compiled module ``steer._C`` imports (it is built by every install)."""
    return compiled.extension_imports("steer._C")


def _check_cpu(logits: torch.Tensor, weights: torch.Tensor) -> None:
    if logits.device.type != "cpu" or weights.device.type != "cpu":
        raise ValueError(f"the cpp backend runs on CPU tensors, got logits on {logits.device}, weights on {weights.device}")


def _raise_for_status(ext, op: str, status: int, row: int, stream: int) -> None:
    if status == ext.STEER_ERR_NAN:
        raise errors.nan_in_logits(row, stream)
    if status == ext.STEER_ERR_POSINF:
        raise errors.posinf_in_logits(row, stream)
    if status == ext.STEER_ERR_EMPTY_ROW:
        raise errors.no_finite_token(row)
    if status != ext.STEER_OK:
        raise RuntimeError(f"steer._C.{op} returned unknown status {status}")


def combine(
    logits: torch.Tensor, weights: torch.Tensor, *, normalize: bool, vocab_size: int, plausibility_alpha: float
) -> torch.Tensor:
    """Combined STEER scores [B, V] float32 of validated CPU logits [B, K, V] and weights [B, K]."""
    ext = compiled.extension("steer._C")
    _check_cpu(logits, weights)
    logits, weights, out = compiled.native_buffers(logits, weights)
    arguments = compiled.combine_arguments(
        logits, weights, out, vocab_size=vocab_size, normalize=normalize, plausibility_alpha=plausibility_alpha
    )
    # The thread budget the user gave torch applies to the kernel too.
    status, row, stream = ext.combine(*arguments, torch.get_num_threads(), compiled.dtype_code(logits.dtype))
    _raise_for_status(ext, "combine", status, row, stream)
    return out


def sample(
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens LongTensor [B], log-probabilities float32 [B]) drawn from validated CPU logits."""
    ext = compiled.extension("steer._C")
    _check_cpu(logits, weights)
    if logits.dtype not in compiled.DTYPE_CODES:
        raise ValueError(f"logits must be float32, float16 or bfloat16, got {logits.dtype}")
    weights = compiled.kernel_weights(weights, logits.device)
    seeds, row_keys, steps = (compiled.per_row_int64(t.cpu()) for t in (seeds, row_keys, steps))
    batch = logits.shape[0]
    tokens = torch.empty(batch, dtype=torch.int64)
    logprobs = torch.empty(batch, dtype=torch.float32)
    status, row, stream = ext.sample(
        logits.data_ptr(), compiled.dtype_code(logits.dtype), *logits.shape, *logits.stride(),
        weights.data_ptr(), weights.stride(0), vocab_size, float(plausibility_alpha),
        float(temperature), min(int(top_k), vocab_size), float(top_p),
        seeds.data_ptr(), row_keys.data_ptr(), steps.data_ptr(), tokens.data_ptr(), logprobs.data_ptr(),
        torch.get_num_threads(),
    )  # fmt: skip
    _raise_for_status(ext, "sample", status, row, stream)
    return tokens, logprobs
