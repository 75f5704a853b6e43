"""STEER decoding the way the paper's code did it, minus its bugs: every step recomputes full,
uncached forwards of the expert on the prompt, the base on the prompt and the expert on each
negative context. O(length^2) and slow, but obviously right: the oracle the drop-in and the
engine are tested against, and the "paper" baseline of the benchmarks. One sample at a time, so
no padding or batching can hide a mistake.
"""

from __future__ import annotations

import torch

from steer import reference
from steer.config import steer_weights
from steer.model_info import sliding_windows


def block_mask(chunk_lengths: list[int], tail: int, dtype: torch.dtype = torch.float32, window: int | None = None) -> torch.Tensor:
    """[1, 1, T, T] additive attention mask of a joined context assembled from per-example KV
    (SteerConfig.per_example_kv): causal, each chunk seeing only itself, and the ``tail``
    positions after the chunks seeing everything before them; with a sliding ``window``, no query
    sees more than the last ``window`` keys (its own included). In the model's dtype: transformers
    5.25 reads an additive mask of another float dtype wrongly."""
    total = sum(chunk_lengths) + tail
    allowed = torch.tril(torch.ones(total, total, dtype=torch.bool))
    if window is not None:
        allowed &= ~torch.tril(torch.ones(total, total, dtype=torch.bool), diagonal=-window)
    start = 0
    for length in chunk_lengths:
        allowed[start : start + length, :start] = False
        start += length
    mask = torch.zeros(1, 1, total, total, dtype=dtype)
    mask[0, 0][~allowed] = torch.finfo(dtype).min
    return mask


def _block_masks(config, chunk_lengths: list[int], tail: int, parameter: torch.Tensor):
    """The 4-D attention mask(s) that stand for the model's own, in the dtype and on the device of
    ``parameter``: one block mask where every layer has one window (``sliding_windows``: a config
    without ``layer_types`` always does), else one per layer kind with that kind's window, a dict by
    kind as transformers takes it (Gemma, Qwen2/3)."""
    total = sum(chunk_lengths) + tail
    windows = [w if w is not None and w < total else None for w in sliding_windows(config, config.num_hidden_layers)]

    def mask(window):
        return block_mask(chunk_lengths, tail, parameter.dtype, window=window).to(parameter.device)

    if len(set(windows)) == 1:
        return mask(windows[0])
    return {kind: mask(w) for kind, w in zip(config.layer_types, windows)}


@torch.no_grad()
def _last_logits(model, tokens: torch.Tensor, chunk_lengths: list[int] | None = None) -> torch.Tensor:
    """The next-token logits after ``tokens``; with ``chunk_lengths``, of the context whose leading
    chunks each attend only to themselves (``block_mask``)."""
    parameter = next(model.parameters())
    kwargs = {}
    if chunk_lengths:
        # A 4-D mask replaces the model's own, its sliding windows included, so each layer kind's
        # window goes into its mask.
        kwargs["attention_mask"] = _block_masks(model.config, chunk_lengths, len(tokens) - sum(chunk_lengths), parameter)
    return model(input_ids=tokens.to(parameter.device).unsqueeze(0), use_cache=False, **kwargs).logits[0, -1].float().cpu()


@torch.no_grad()
def steer_generate_uncached(
    expert,
    base,
    prompt_ids: torch.Tensor,
    negative_streams: list[torch.Tensor],
    *,
    gamma: float,
    eta: float,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    vocab_size: int | None = None,
    plausibility_alpha: float = 0.0,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    eos_exempt: bool = False,
    negative_chunks: list[list[list[int]]] | None = None,
) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` for one prompt; return the new token ids (1-D, EOS kept).
    ``eos_exempt``: EOS gets the contrast's probability (steer.reference's ``exempt``).
    ``negative_chunks``: per negative stream, the chunks of its leading tokens that attend only to
    themselves (Request.negative_chunks; [] for an exact stream)."""
    chunk_lengths = [[len(c) for c in chunks] for chunks in (negative_chunks or [[] for _ in negative_streams])]
    weights = steer_weights(gamma, eta, len(negative_streams) if eta != 0 else 0)
    exempt = None
    if eos_exempt and eta != 0 and eos_token_id is not None:
        exempt = (eos_token_id, range(2, len(weights)))
    generated = torch.empty(0, dtype=torch.long)
    for _ in range(max_new_tokens):
        streams = [_last_logits(expert, torch.cat([prompt_ids, generated]))]
        streams.append(_last_logits(base, torch.cat([prompt_ids, generated])))
        if eta != 0:
            streams += [_last_logits(expert, torch.cat([negative, generated]), lengths)
                        for negative, lengths in zip(negative_streams, chunk_lengths)]  # fmt: skip
        vocab = min(s.shape[0] for s in streams) if vocab_size is None else vocab_size
        logits = torch.stack([s[:vocab] for s in streams]).unsqueeze(0)
        probs = reference.probabilities(
            logits, weights, temperature=temperature, top_k=top_k, top_p=top_p, plausibility_alpha=plausibility_alpha,
            exempt=exempt,
        )
        token = torch.multinomial(probs, 1, generator=generator)[0] if temperature > 0 else probs.argmax(-1)
        generated = torch.cat([generated, token])
        if eos_token_id is not None and int(token) == eos_token_id:
            break
    return generated
