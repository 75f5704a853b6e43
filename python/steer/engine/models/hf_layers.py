"""Decoders run by their own transformers code, with steer's paged attention and projections.

The families here (Qwen3, Gemma 2, Gemma 3 text, Phi-3, OLMo 2, SmolLM3) differ from Llama in
details their modeling code already gets right: q/k norms (Qwen3, Gemma 3, OLMo 2 over the whole
projection), pre- and post-norms (Gemma, OLMo 2), scaled embeddings (Gemma), local and global
rotary embeddings (Gemma 3), layers without rotary positions (SmolLM3), fused qkv and gate-up
projections (Phi-3), attention and final-logit soft caps and alternating sliding-window layers
(Gemma 2). So this runner does not re-implement them: it runs the model's own decoder forward on a
*shadow* of it, a copy of its module tree that shares every parameter (the user's model is not
touched), in which

  * every linear module (``nn.Linear``, a PEFT LoRA layer over one) is a ``ProjectionModule``:
    steer's ``Projection`` (the CPU decode matmul; a LoRA adapter applied to the step's first
    ``adapter_tokens`` rows only, so that expert and base rows of a LoRA expert share one forward);
  * the config names the attention implementation "steer_paged", registered in transformers'
    ``AttentionInterface``: the layer's new keys and values go into the paged KV pool and its
    queries attend there in place (``PagedAttention``), with the sliding window and soft cap the
    layer passes; no mask is built (transformers builds none for a custom implementation).

The step's whole batch is one sequence of T tokens to the model (``input_ids`` [1, T], the rows'
positions as ``position_ids``); the rows are told apart by the paged attention alone. The final
logit soft cap (Gemma 2 and 3), which the model applies in its LM head forward, is applied by
the model runner to the logits (``logit_soft_cap``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from steer.engine.kv_cache import KVShape
from steer.engine.models.rotary import key_rotation
from steer.engine.projection import ProjectionReader, is_lora_layer

MODEL_TYPES = ("qwen3", "gemma2", "gemma3_text", "phi3", "olmo2", "smollm3")
ATTENTION_NAME = "steer_paged"


@dataclass
class StepContext:
    """What the shadow's attention and projections read during one forward (set per forward)."""

    attention: object = None  # PagedAttention
    batch: object = None  # StepBatch
    adapter_tokens: object = 0  # int, or a [T, 1] 0/1 tensor (CUDA graphs)


class ProjectionModule(torch.nn.Module):
    """A linear module of the shadow: ``Projection`` over the step's rows."""

    def __init__(self, projection, context: StepContext) -> None:
        super().__init__()
        self.projection, self.context = projection, context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        return self.projection(rows, self.context.adapter_tokens).reshape(*x.shape[:-1], -1)


def _paged_attention(module, query, key, value, attention_mask, *, scaling=None, dropout=0.0, sliding_window=None,
                     softcap=None, **kwargs):  # fmt: skip
    """transformers' attention-function signature: q [1, H, T, D], k and v [1, Hkv, T, D] ->
    ([1, T, H, D], no weights)."""
    if kwargs.get("s_aux") is not None:
        raise ValueError("attention sinks (s_aux) are not supported by the steer engine")
    context = module.steer_context
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # [T, heads, D]
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    out = context.attention(q, k, v, module.layer_idx, context.batch, scale, sliding_window=sliding_window or None,
                            soft_cap=softcap or None)  # fmt: skip
    return out.unsqueeze(0), None


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, _paged_attention)


def _is_linear(module) -> bool:
    return is_lora_layer(module) or isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def _shadow(module, name: str, config, context: StepContext, read: ProjectionReader):
    """A copy of ``module``'s tree sharing its parameters, linear modules as ProjectionModules."""
    if _is_linear(module):
        return ProjectionModule(read(module, name), context)
    clone = copy.copy(module)  # a new module object: __dict__ copied, its dicts still shared
    clone.__dict__["_modules"] = {
        child_name: None if child is None else _shadow(child, f"{name}.{child_name}" if name else child_name, config, context, read)
        for child_name, child in module._modules.items()
    }  # fmt: skip
    clone.__dict__["training"] = False
    if "config" in clone.__dict__:
        clone.__dict__["config"] = config
    clone.__dict__["steer_context"] = context
    return clone


class HFLayersRunner:
    def __init__(self, model, *, merge_adapters: bool = False) -> None:
        _register_attention()
        self.model = model
        config = copy.copy(model.config)  # not the setter: it would also change the shared sub-configs
        config.__dict__["_attn_implementation_internal"] = ATTENTION_NAME
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.kv_shape = KVShape(config.num_hidden_layers, self.num_kv_heads, self.head_dim)
        self.context = StepContext()
        read = ProjectionReader(model, merge_adapters=merge_adapters)
        self.decoder = _shadow(model.get_decoder(), "model", config, self.context, read)
        self.lm_head = read(model.lm_head, "lm_head")
        read.check_all_adapters_covered()
        self.has_adapters = read.has_adapters
        self.logit_soft_cap = getattr(config, "final_logit_softcapping", None) or None
        # moves cached keys to another position (per-example KV): Gemma 3 rotates by layer type,
        # SmolLM3's NoPE layers not at all
        layer_types = config.layer_types if config.model_type == "gemma3_text" else None
        no_rope = getattr(config, "no_rope_layers", None) if config.model_type == "smollm3" else None
        self.key_rotation = key_rotation(
            getattr(self.decoder, "rotary_emb", None), config.num_hidden_layers, layer_types, no_rope
        )

    @torch.no_grad()
    def last_hidden(self, attention, batch, adapter_rows: int = 0) -> torch.Tensor:
        """The final-normed hidden state [R, hidden] after each row's last new token; LoRA
        adapters (if any) apply to the first ``adapter_rows`` rows."""
        context = self.context
        context.attention, context.batch = attention, batch
        context.adapter_tokens = batch.tokens_of_rows(adapter_rows)
        try:
            out = self.decoder(input_ids=batch.input_ids.unsqueeze(0), position_ids=batch.positions.unsqueeze(0),
                               use_cache=False)  # fmt: skip
        finally:
            context.attention = context.batch = None
        return out.last_hidden_state[0][batch.last_token]
