"""Normalise the drop-in's ``negative_input_ids`` argument into token streams per batch row.

Accepted forms (each stream is the expert's context for one negative prompt):
  * one 1-D LongTensor: the same single negative stream for every row;
  * a 2-D LongTensor [B, L]: one stream per row, padding marked by ``negative_attention_mask``;
  * a list with one entry per batch row, each a 1-D LongTensor (one stream: the paper's "concat"
    mode) or a list of 1-D LongTensors (M streams whose log-probabilities are averaged:
    "separate" mode).
``negative_attention_mask`` mirrors the structure and drops the positions where it is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Stream = torch.Tensor  # 1-D int64 token ids


def _as_stream(ids, mask, index: str, vocab_size: int) -> Stream:
    """One stream's ids as a 1-D CPU LongTensor without padding; ``index`` (e.g. "[2][0]") names it."""
    ids = torch.as_tensor(ids)
    if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(
            f"negative_input_ids{index} must be a 1-D tensor of token ids, got shape {tuple(ids.shape)} and dtype {ids.dtype}"
        )
    if mask is not None:
        mask = torch.as_tensor(mask)
        if mask.shape != ids.shape:
            raise ValueError(
                f"negative_attention_mask{index} has shape {tuple(mask.shape)} but negative_input_ids{index} has {tuple(ids.shape)}"
            )
        ids = ids[mask.bool().cpu()]
    if ids.numel() == 0:
        raise ValueError(f"negative_input_ids{index} is empty: a negative stream needs at least one token")
    ids = ids.long().cpu()
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"negative_input_ids{index} holds token ids outside the model's vocabulary [0, {vocab_size})")
    return ids


def _is_list_of_streams(entry) -> bool:
    return isinstance(entry, (list, tuple)) and len(entry) > 0 and not isinstance(entry[0], int)


def _row_streams(entry, mask, index: str, vocab_size: int) -> list[Stream]:
    if not _is_list_of_streams(entry):
        return [_as_stream(entry, mask, index, vocab_size)]
    masks = mask if mask is not None else [None] * len(entry)
    if len(masks) != len(entry):
        raise ValueError(f"negative_attention_mask{index} has {len(masks)} streams but negative_input_ids{index} has {len(entry)}")
    return [_as_stream(ids, m, f"{index}[{i}]", vocab_size) for i, (ids, m) in enumerate(zip(entry, masks))]


@dataclass(frozen=True)
class NegativePrompts:
    """The negative streams of every batch row (``shared`` when one list serves every row)."""

    per_row: list[list[Stream]]
    shared: bool

    @classmethod
    def parse(cls, negative_input_ids, negative_attention_mask, vocab_size: int) -> NegativePrompts:
        if isinstance(negative_input_ids, torch.Tensor) and negative_input_ids.dim() == 1:
            return cls([[_as_stream(negative_input_ids, negative_attention_mask, "", vocab_size)]], True)
        if isinstance(negative_input_ids, torch.Tensor) and negative_input_ids.dim() == 2:
            entries = list(negative_input_ids)
            masks = list(negative_attention_mask) if negative_attention_mask is not None else None
        elif isinstance(negative_input_ids, (list, tuple)):
            entries = list(negative_input_ids)
            masks = list(negative_attention_mask) if negative_attention_mask is not None else None
        else:
            raise ValueError(
                "negative_input_ids must be a 1-D LongTensor (shared by every row), a 2-D LongTensor "
                f"(one stream per row) or a list with one entry per batch row, got {type(negative_input_ids).__name__}"
            )
        if not entries:
            raise ValueError("negative_input_ids is an empty list: give one entry per batch row")
        if masks is not None and len(masks) != len(entries):
            raise ValueError(f"negative_attention_mask has {len(masks)} rows but negative_input_ids has {len(entries)}")
        masks = masks if masks is not None else [None] * len(entries)
        rows = [_row_streams(e, m, f"[{r}]", vocab_size) for r, (e, m) in enumerate(zip(entries, masks))]
        return cls(rows, False)

    def for_batch(self, batch_size: int) -> list[list[Stream]]:
        """The streams of each of ``batch_size`` rows; a clear error if the counts disagree."""
        if self.shared:
            return self.per_row * batch_size
        if len(self.per_row) != batch_size:
            raise ValueError(
                f"negative_input_ids has {len(self.per_row)} entries but the batch has {batch_size} rows "
                "(with num_return_sequences, give one entry per returned sequence)"
            )
        return self.per_row
