"""GPT-2: learned positions, LayerNorm, fused QKV projection (Conv1D), tied LM head."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from steer.engine.kv_cache import KVShape
from steer.engine.projection import Projection, ProjectionReader

MODEL_TYPES = ("gpt2",)


@dataclass(frozen=True)
class GPT2Layer:
    ln_1: torch.nn.Module
    qkv: Projection
    attention_out: Projection
    ln_2: torch.nn.Module
    fc: Projection
    act: torch.nn.Module
    mlp_out: Projection


class GPT2Runner:
    def __init__(self, model, *, merge_adapters: bool = False) -> None:
        self.model = model
        self.transformer = model.transformer
        config = model.config
        if config.scale_attn_by_inverse_layer_idx or config.reorder_and_upcast_attn:
            raise ValueError("GPT-2 with scale_attn_by_inverse_layer_idx or reorder_and_upcast_attn is not supported")
        self.num_heads = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.scale = 1.0 / math.sqrt(self.head_dim) if config.scale_attn_weights else 1.0
        self.key_rotation = None  # learned absolute positions: cached keys cannot be moved (per-example KV)
        self.kv_shape = KVShape(config.n_layer, self.num_heads, self.head_dim)
        read = ProjectionReader(model, merge_adapters=merge_adapters)
        self.layers = [
            GPT2Layer(
                block.ln_1, read(block.attn.c_attn, f"transformer.h.{i}.attn.c_attn"),
                read(block.attn.c_proj, f"transformer.h.{i}.attn.c_proj"), block.ln_2,
                read(block.mlp.c_fc, f"transformer.h.{i}.mlp.c_fc"), block.mlp.act,
                read(block.mlp.c_proj, f"transformer.h.{i}.mlp.c_proj"),
            )
            for i, block in enumerate(self.transformer.h)
        ]  # fmt: skip
        self.final_norm = self.transformer.ln_f
        self.lm_head = read(model.lm_head, "lm_head")
        read.check_all_adapters_covered()
        self.has_adapters = read.has_adapters
        self.logit_soft_cap = None  # no final logit soft cap in this family

    def _attention(self, index: int, layer: GPT2Layer, x, attention, batch, adapter_tokens: int):
        tokens = x.shape[0]
        q, k, v = layer.qkv(x, adapter_tokens).split(self.num_heads * self.head_dim, dim=-1)
        shape = (tokens, self.num_heads, self.head_dim)
        out = attention(q.reshape(shape), k.reshape(shape), v.reshape(shape), index, batch, self.scale)
        return layer.attention_out(out.reshape(tokens, self.num_heads * self.head_dim), adapter_tokens)

    @torch.no_grad()
    def last_hidden(self, attention, batch, adapter_rows: int = 0) -> torch.Tensor:
        adapter_tokens = batch.tokens_of_rows(adapter_rows)
        x = self.transformer.wte(batch.input_ids) + self.transformer.wpe(batch.positions)
        for index, layer in enumerate(self.layers):
            x = x + self._attention(index, layer, layer.ln_1(x), attention, batch, adapter_tokens)
            hidden = layer.act(layer.fc(layer.ln_2(x), adapter_tokens))
            x = x + layer.mlp_out(hidden, adapter_tokens)
        return self.final_norm(x[batch.last_token])
