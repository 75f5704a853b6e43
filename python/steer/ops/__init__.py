"""The public STEER ops. Each validates its input once, then hands it to a backend.

A decode step's logits arrive as [B, K, V]: B samples, K streams each (expert on the prompt, base
on the prompt, expert on each negative context), V tokens. ``combine`` turns them into one
distribution per sample; ``sample`` draws a token from it.
"""

from __future__ import annotations

import torch

from steer.ops import dispatch, validate
from steer.ops.dispatch import backends


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
    weights, vocab_size = validate.prepare_combine_inputs(logits, weights, vocab_size, plausibility_alpha)
    validate.check_sampling_parameters(temperature, top_k, top_p)
    batch = logits.shape[0]
    seeds, keys, steps = validate.sampling_keys(
        batch, logits.device, seed=seed, generator=generator, row_keys=row_keys, step=step
    )
    impl = dispatch.resolve(backend, "sample", logits.device)
    if batch == 0:
        tokens = torch.empty(0, dtype=torch.long, device=logits.device)
        logprobs = torch.empty(0, dtype=torch.float32, device=logits.device)
    else:
        tokens, logprobs = impl.sample(
            logits,
            weights,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seeds=seeds,
            row_keys=keys,
            steps=steps,
            vocab_size=vocab_size,
            plausibility_alpha=plausibility_alpha,
        )
    return (tokens, logprobs) if return_logprobs else tokens


__all__ = ["backends", "combine", "sample"]
