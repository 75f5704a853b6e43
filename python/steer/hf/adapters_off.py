"""The base model of a PEFT LoRA expert, without a second copy of its weights.

STEER contrasts the expert with its base. When the expert is ``base + LoRA``, the base is the very
same weights with the adapters switched off, so the drop-in can use this view as its
``base_model``: every forward of the view runs the PEFT model inside ``disable_adapter()``.
"""

from __future__ import annotations

import functools

import torch


class AdaptersOff(torch.nn.Module):
    """``peft_model`` with its adapters off for every forward made through this view."""

    def __init__(self, peft_model) -> None:
        if not callable(getattr(peft_model, "disable_adapter", None)) or not callable(getattr(peft_model, "get_base_model", None)):
            raise ValueError(f"AdaptersOff needs a PEFT model with adapters to switch off, got {type(peft_model).__name__}")
        super().__init__()
        self.peft_model = peft_model
        inner = peft_model.get_base_model()
        # The forward keeps the inner model's signature: callers read its argument names (the cache's).
        @functools.wraps(inner.forward)
        def forward_adapters_off(*args, **kwargs):
            with peft_model.disable_adapter():
                return peft_model(*args, **kwargs)

        self.forward = forward_adapters_off
        self.train(peft_model.training)

    @property
    def config(self):
        return self.peft_model.get_base_model().config

    @property
    def generation_config(self):
        return self.peft_model.get_base_model().generation_config

    def get_input_embeddings(self):
        return self.peft_model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.peft_model.get_base_model().get_output_embeddings()
