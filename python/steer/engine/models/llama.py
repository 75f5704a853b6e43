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
from steer.engine.models.rotary import key_rotation, rotate_half
from steer.engine.projection import Projection, ProjectionReader
from steer.model_info import sliding_windows

MODEL_TYPES = ("llama", "mistral", "qwen2")


def project(parts: tuple[Projection, ...], x: torch.Tensor, adapter_tokens, sizes: list[int]) -> list[torch.Tensor]:
    """The outputs of projections that read x: (q, k, v) or (gate, up), from one fused Projection
    (split by ``sizes``) or one each."""
    if len(parts) == 1:
        return parts[0](x, adapter_tokens).split(sizes, dim=-1)
    return [part(x, adapter_tokens) for part in parts]


@dataclass(frozen=True)
class LlamaLayer:
    input_norm: torch.nn.Module
    qkv: tuple[Projection, ...]  # (q, k, v), or one fused (fuse_projections)
    o: Projection
    scaling: float
    sliding_window: int | None
    post_attention_norm: torch.nn.Module
    gate_up: tuple[Projection, ...]  # (gate, up), or one fused
    down: Projection
    act: torch.nn.Module
    mlp_sizes: list[int]


class LlamaFamilyRunner:
    def __init__(self, model, *, merge_adapters: bool = False, fuse_projections: bool = False) -> None:
        self.model = model
        self.decoder = model.model
        config = model.config
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.kv_shape = KVShape(config.num_hidden_layers, self.num_kv_heads, self.head_dim)
        self.qkv_sizes = [self.num_heads * self.head_dim] + [self.num_kv_heads * self.head_dim] * 2
        windows = sliding_windows(config, config.num_hidden_layers)
        read = ProjectionReader(model, merge_adapters=merge_adapters)
        self.layers = []

        def parts(module, prefix: str, names: tuple[str, ...]) -> tuple[Projection, ...]:
            modules, full_names = [getattr(module, n) for n in names], [f"{prefix}.{n}" for n in names]
            if fuse_projections:
                return (read.fused(modules, full_names),)
            return tuple(read(m, n) for m, n in zip(modules, full_names))

        for index, layer in enumerate(self.decoder.layers):
            attention, mlp, name = layer.self_attn, layer.mlp, f"model.layers.{index}"
            self.layers.append(LlamaLayer(
                layer.input_layernorm,
                parts(attention, f"{name}.self_attn", ("q_proj", "k_proj", "v_proj")),
                read(attention.o_proj, f"{name}.self_attn.o_proj"),
                attention.scaling,
                windows[index],
                layer.post_attention_layernorm,
                parts(mlp, f"{name}.mlp", ("gate_proj", "up_proj")),
                read(mlp.down_proj, f"{name}.mlp.down_proj"),
                mlp.act_fn,
                [mlp.gate_proj.out_features, mlp.up_proj.out_features],
            ))  # fmt: skip
        self.final_norm = self.decoder.norm
        self.lm_head = read(model.lm_head, "lm_head")
        read.check_all_adapters_covered()
        self.has_adapters = read.has_adapters
        self.logit_soft_cap = None  # no final logit soft cap in this family
        # moves cached keys to another position (per-example KV); None where it cannot
        self.key_rotation = key_rotation(self.decoder.rotary_emb, config.num_hidden_layers)

    def _attention(self, index: int, layer: LlamaLayer, x, cos, sin, attention, batch, adapter_tokens: int):
        tokens = x.shape[0]
        q, k, v = project(layer.qkv, x, adapter_tokens, self.qkv_sizes)
        q = q.view(tokens, self.num_heads, self.head_dim)
        k = k.view(tokens, self.num_kv_heads, self.head_dim)
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        out = attention(q, k, v, index, batch, layer.scaling, sliding_window=layer.sliding_window)
        return layer.o(out.reshape(tokens, self.num_heads * self.head_dim), adapter_tokens)

    @staticmethod
    def _mlp(layer: LlamaLayer, x, adapter_tokens: int):
        gate, up = project(layer.gate_up, x, adapter_tokens, layer.mlp_sizes)
        return layer.down(layer.act(gate) * up, adapter_tokens)

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
