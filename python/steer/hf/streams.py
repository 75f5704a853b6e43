"""A batch of token streams that one model decodes step by step with its own KV cache.

The drop-in runs two of these next to ``generate``'s own expert forward: the base model on the
prompt, and the expert on every negative context. Each is prefilled once, then extended by one
token per step, so no step recomputes a whole sequence (the paper's code did).
"""

from __future__ import annotations

import inspect

import torch


def _cache_argument_name(model) -> str:
    """transformers 5 calls the KV cache argument ``cache``; 4.x called it ``past_key_values``."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding, as ``generate`` computes them."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def left_pad(sequences: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D token tensors of different lengths into left-padded ids and their attention mask."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, length - len(sequence) :] = sequence
        mask[row, length - len(sequence) :] = 1
    return ids, mask


class CachedStreams:
    """Rows of one model, each with its own context, decoded in lockstep through one KV cache."""

    def __init__(self, model) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self._cache_name = _cache_argument_name(model)
        self.cache = None
        self.attention_mask: torch.Tensor | None = None

    @torch.no_grad()
    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        output = self.model(
            input_ids=input_ids,
            attention_mask=self.attention_mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_name: self.cache},
        )
        self.cache = output.get(self._cache_name)
        return output.logits[:, -1].float()

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run every row's (left-padded) context; return the logits [R, V] after its last token."""
        self.cache = None
        self.attention_mask = attention_mask.to(self.device)
        return self._forward(input_ids.to(self.device), positions_from_mask(self.attention_mask))

    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token [R] to every row; return the logits [R, V] that follow it."""
        next_positions = self.attention_mask.sum(dim=-1, keepdim=True)
        ones = torch.ones_like(self.attention_mask[:, :1])
        self.attention_mask = torch.cat([self.attention_mask, ones], dim=-1)
        return self._forward(tokens.to(self.device).unsqueeze(1), next_positions)
