"""The public STEER ops. Each validates its input once, then hands it to a backend.

A decode step's logits arrive as [B, K, V]: B samples, K streams each (expert on the prompt, base
on the prompt, expert on each negative context), V tokens. ``combine`` turns them into one
distribution per sample; ``sample`` draws a token from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from steer.ops import dispatch, errors, validate
from steer.ops.dispatch import backends
from steer.ops.exempt import exempt_from_negatives


def combine(
    logits: torch.Tensor,
    weights,
    *,
    normalize: bool = True,
    backend: str = "auto",
    vocab_size: int | None = None,
    plausibility_alpha: float = 0.0,
) -> torch.Tensor:
    """Combine K streams of logits into one float32 [B, V] score row per sample.

    Args:
        logits: [B, K, V] float32, float16 or bfloat16. Stream 0 must be the expert on the prompt
            when ``plausibility_alpha`` is used.
        weights: [K] (shared) or [B, K] (per row), e.g. ``steer.steer_weights(gamma, eta, M)``.
        normalize: True returns log-probabilities,
            ``log_softmax(sum_k w_k * log_softmax(logits[:, k]))``; False returns the cheaper
            ``sum_k w_k * logits[:, k]``, equal up to a per-row constant (enough for argmax,
            top-k, top-p and sampling).
        backend: "auto" (the fastest available) or a name from ``steer.backends("combine")``.
        vocab_size: the tokenizer's vocabulary size when the LM head is padded past it; columns
            at or beyond it come back as -inf.
        plausibility_alpha: if > 0, keep only tokens whose expert log-probability is within
            log(alpha) of the expert's best token (Contrastive Decoding's adaptive floor).

    Raises:
        ValueError: on NaN or +inf logits, bad shapes or dtypes, or a row with no finite score.
    """
    weights, vocab_size = validate.prepare_combine_inputs(logits, weights, vocab_size, plausibility_alpha)
    impl = dispatch.resolve(backend, "combine", logits.device)
    if logits.shape[0] == 0:
        return torch.empty((0, logits.shape[-1]), dtype=torch.float32, device=logits.device)
    return impl.combine(logits, weights, normalize=normalize, vocab_size=vocab_size, plausibility_alpha=plausibility_alpha)


def sample(
    logits: torch.Tensor,
    weights,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed=None,
    generator: torch.Generator | None = None,
    row_keys=None,
    step=0,
    backend: str = "auto",
    return_logprobs: bool = False,
    vocab_size: int | None = None,
    plausibility_alpha: float = 0.0,
):
    """Draw one token per row from the combined STEER distribution.

    The combined scores (see ``combine``) are divided by ``temperature``, restricted to the
    ``top_k`` best tokens (0: off; ties with the k-th are kept), then to the ``top_p`` nucleus
    (1.0: off), and a token is drawn from the softmax of what is left. ``temperature=0`` is greedy
    (argmax, lowest id on ties).

    Randomness is counter-based (Philox4x32-10, Gumbel-max; see ``steer.reference``) and keyed by
    (seed, row key, step, token id), so every backend draws the same tokens, and a row's tokens do
    not change when the rows around it do.

    Args:
        seed: an int, or an integer tensor [B] of per-row seeds (may live on the GPU). None draws
            one from ``generator``, or from torch's global generator (``torch.manual_seed``).
        row_keys: integer tensor [B] naming each row's stream of noise (e.g. a sample id); default
            the row's position in the batch.
        step: int or integer tensor ([] or [B]): the decode step, so each step gets fresh noise.

    Returns:
        LongTensor [B] of token ids, or (tokens, logprobs) with ``return_logprobs=True``, where
        logprobs [B] float32 are the chosen tokens' log-probabilities under the distribution they
        were drawn from (for temperature=0: the filtered distribution at temperature 1).
    """
    tokens, logprobs, _ = _sample(
        logits, weights, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, generator=generator,
        row_keys=row_keys, step=step, backend=backend, vocab_size=vocab_size, plausibility_alpha=plausibility_alpha,
        defer_errors=False,
    )  # fmt: skip
    return (tokens, logprobs) if return_logprobs else tokens


@dataclass(frozen=True)
class DeferredSample:
    """What ``sample_deferred`` returns: the drawn tokens and log-probabilities (on the logits'
    device, maybe not computed yet) and the sampler's recorded errors, not yet read (None where
    the backend checked its input on the host and would have raised already)."""

    tokens: torch.Tensor
    logprobs: torch.Tensor
    errors: errors.RecordedErrors | None


def sample_deferred(logits: torch.Tensor, weights, *, rows=None, **options) -> DeferredSample:
    """``sample`` (same arguments but ``return_logprobs``) without reading anything back from the
    device: a GPU kernel records NaN / +inf / empty-row errors in a device buffer instead of
    raising, and ``read_tokens`` reads that buffer together with the tokens, in one transfer.
    Backends that run on the host (cpp, torch) raise at once, as ``sample`` does.

    ``rows``: the batch rows that these logits' rows stand for, when they are a sub-batch, so that
    an error names the caller's row."""
    try:
        tokens, logprobs, recorded = _sample(logits, weights, defer_errors=True, **options)
    except errors.LogitsError as error:  # a host backend raised: name the caller's row
        if rows is None:
            raise
        raise error.for_rows(rows) from None
    if recorded is not None and rows is not None:
        recorded = errors.RecordedErrors(recorded.buffer, recorded.untouched, recorded.num_streams, tuple(rows))
    return DeferredSample(tokens, logprobs, recorded)


def read_tokens(tokens: torch.Tensor, recorded=()) -> list[int]:
    """``tokens.tolist()`` and every error buffer of ``recorded`` (``DeferredSample.errors``; None
    entries skipped) in one device-to-host transfer: a decode step's one host synchronisation.
    Raises the shared ValueError of the first recorded error."""
    pending = [r for r in recorded if r is not None]
    if not pending:
        return tokens.tolist()
    values = torch.cat([tokens.to(torch.int64).flatten()] + [r.buffer for r in pending]).tolist()
    count = tokens.numel()
    for index, record in enumerate(pending):
        record.raise_if_any(values[count + 3 * index: count + 3 * index + 3])
    return values[:count]


def _sample(
    logits, weights, *, temperature=1.0, top_k=0, top_p=1.0, seed=None, generator=None, row_keys=None, step=0,
    backend="auto", vocab_size=None, plausibility_alpha=0.0, defer_errors: bool,
):  # fmt: skip
    """(tokens, logprobs, recorded errors or None) of validated input, from the resolved backend."""
    weights, vocab_size = validate.prepare_combine_inputs(logits, weights, vocab_size, plausibility_alpha)
    validate.check_sampling_parameters(temperature, top_k, top_p)
    batch = logits.shape[0]
    seeds, keys, steps = validate.sampling_keys(
        batch, logits.device, seed=seed, generator=generator, row_keys=row_keys, step=step
    )
    impl = dispatch.resolve(backend, "sample", logits.device)
    if batch == 0:
        empty = torch.empty(0, dtype=torch.long, device=logits.device)
        return empty, torch.empty(0, dtype=torch.float32, device=logits.device), None
    options = dict(
        temperature=temperature, top_k=top_k, top_p=top_p, seeds=seeds, row_keys=keys, steps=steps,
        vocab_size=vocab_size, plausibility_alpha=plausibility_alpha,
    )  # fmt: skip
    if defer_errors and hasattr(impl, "sample_deferred"):
        return impl.sample_deferred(logits, weights, **options)
    return (*impl.sample(logits, weights, **options), None)


__all__ = ["DeferredSample", "backends", "combine", "exempt_from_negatives", "read_tokens", "sample", "sample_deferred"]
