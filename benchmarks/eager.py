"""The baseline every sampler benchmark compares against: STEER sampling as plain torch eager code.

K log_softmaxes, a weighted sum, temperature, top-k (torch.topk) or a sort for top-p, a softmax
and a multinomial: about ten kernels and several passes over the logits.
"""

from __future__ import annotations

import torch


def eager_chain(logits, weights, *, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Token ids [B, 1] (greedy [B] when temperature == 0); weights [K] or [B, K]."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # the K streams' log_softmaxes
    scores = (weights.unsqueeze(-1) * logprobs).sum(dim=1)  # weighted sum over streams
    if temperature == 0:
        return scores.argmax(dim=-1)
    scores = scores / temperature
    if top_k > 0:
        values, indices = torch.topk(scores, top_k, dim=-1)
    else:
        values, indices = torch.sort(scores, dim=-1, descending=True)
    if top_p < 1.0:
        probs = torch.softmax(values, dim=-1)
        values = values.masked_fill(torch.cumsum(probs, dim=-1) - probs >= top_p, float("-inf"))
    choice = torch.multinomial(torch.softmax(values, dim=-1), 1)
    return indices.gather(1, choice)
