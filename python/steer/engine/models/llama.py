"""The Llama family (Llama, Mistral, Qwen2): pre-norm blocks, rotary positions, grouped-query
attention, and per-layer sliding windows where the config has them (Mistral, Qwen2's
``use_sliding_window``).

The weights are read from the module the user passed (embeddings, norms, projections, the
model's own rotary embedding, so every rope scaling transformers knows applies); attention goes
through the engine's paged attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from steer.engine.kv_cache import KVShape
from steer.engine.projection import Projection, ProjectionReader
from steer.model_info import sliding_windows

MODEL_TYPES = ("llama", "mistral", "qwen2")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


@dataclass(frozen=True)
class LlamaLayer:
    input_norm: torch.nn.Module
    q: Projection
    k: Projection
    v: Projection
    o: Projection
    scaling: float
    sliding_window: int | None
    post_attention_norm: torch.nn.Module
    gate: Projection
    up: Projection
    down: Projection
    act: torch.nn.Module


class LlamaFamilyRunner:
    def __init__(self, model, *, merge_adapters: bool = False) -> None:
        self.model = model
        self.decoder = model.model
        config = model.config
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.kv_shape = KVShape(config.num_hidden_layers, self.num_kv_heads, self.head_dim)
        windows = sliding_windows(config, config.num_hidden_layers)
        read = ProjectionReader(model, merge_adapters=merge_adapters)
        self.layers = []
        for index, layer in enumerate(self.decoder.layers):
            attention, mlp, name = layer.self_attn, layer.mlp, f"model.layers.{index}"
            self.layers.append(LlamaLayer(
                layer.input_layernorm,
                *(read(getattr(attention, p), f"{name}.self_attn.{p}") for p in ("q_proj", "k_proj", "v_proj", "o_proj")),
                attention.scaling,
                windows[index],
                layer.post_attention_layernorm,
                *(read(getattr(mlp, p), f"{name}.mlp.{p}") for p in ("gate_proj", "up_proj", "down_proj")),
                mlp.act_fn,
            ))  # fmt: skip
        self.final_norm = self.decoder.norm
        self.lm_head = read(model.lm_head, "lm_head")
        read.check_all_adapters_covered()
        self.has_adapters = read.has_adapters
        self.logit_soft_cap = None  # no final logit soft cap in this family

    def _attention(self, index: int, layer: LlamaLayer, x, cos, sin, attention, batch, adapter_tokens: int):
        tokens = x.shape[0]
        q = layer.q(x, adapter_tokens).view(tokens, self.num_heads, self.head_dim)
        k = layer.k(x, adapter_tokens).view(tokens, self.num_kv_heads, self.head_dim)
        v = layer.v(x, adapter_tokens).view(tokens, self.num_kv_heads, self.head_dim)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        out = attention(q, k, v, index, batch, layer.scaling, sliding_window=layer.sliding_window)
        return layer.o(out.reshape(tokens, self.num_heads * self.head_dim), adapter_tokens)

    @staticmethod
    def _mlp(layer: LlamaLayer, x, adapter_tokens: int):
        return layer.down(layer.act(layer.gate(x, adapter_tokens)) * layer.up(x, adapter_tokens), adapter_tokens)

    @torch.no_grad()
    def last_hidden(self, attention, batch, adapter_rows: int = 0) -> torch.Tensor:
        """The final-normed hidden state [R, hidden] after each row's last new token; LoRA
        adapters (if any) apply to the first ``adapter_rows`` rows."""
        adapter_tokens = batch.tokens_of_rows(adapter_rows)
        x = self.decoder.embed_tokens(batch.input_ids)
        cos, sin = self.decoder.rotary_emb(x.unsqueeze(0), batch.positions.unsqueeze(0))
        cos, sin = cos[0].unsqueeze(1).to(x.dtype), sin[0].unsqueeze(1).to(x.dtype)  # [T, 1, D]
        for index, layer in enumerate(self.layers):
            x = x + self._attention(index, layer, layer.input_norm(x), cos, sin, attention, batch, adapter_tokens)
            x = x + self._mlp(layer, layer.post_attention_norm(x), adapter_tokens)
        return self.final_norm(x[batch.last_token])
