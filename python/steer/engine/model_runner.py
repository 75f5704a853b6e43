"""One batched forward of a Hugging Face causal LM over many streams, with KV in paged blocks.

The runner drives the model's own submodules (embeddings, norms, projections, MLPs, LM head:
the weights of the module the user passed) through its own attention, which reads and writes a
paged KV pool instead of per-sequence caches. Streams of different lengths, each with only its
new tokens to compute (a whole prompt at prefill, one token at decode, or the suffix after a
cached prefix), run in one forward: the projections and MLPs see all new tokens as one [T, H]
matrix, so adding rows costs little while a step is bound by reading the weights.

Supported: the Llama family (Llama, Mistral, Qwen2: RMSNorm, rotary positions, grouped-query
attention) and GPT-2. Anything else raises a ValueError naming the model type.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from steer.engine.projection import Projection, check_adapters_covered, projection_of

LLAMA_FAMILY = ("llama", "mistral", "qwen2")
GPT2_FAMILY = ("gpt2",)


@dataclass(frozen=True)
class KVShape:
    num_layers: int
    num_kv_heads: int
    head_dim: int


class PagedKVCache:
    """K and V of every layer in one pool of slots; slot = block_id * block_size + offset."""

    def __init__(self, shape: KVShape, num_blocks: int, block_size: int, *, dtype: torch.dtype, device) -> None:
        self.shape, self.block_size = shape, block_size
        size = (shape.num_layers, num_blocks * block_size, shape.num_kv_heads, shape.head_dim)
        self.k = torch.zeros(size, dtype=dtype, device=device)
        self.v = torch.zeros(size, dtype=dtype, device=device)

    @staticmethod
    def bytes_per_block(shape: KVShape, block_size: int, dtype: torch.dtype) -> int:
        element = torch.tensor([], dtype=dtype).element_size()
        return 2 * shape.num_layers * block_size * shape.num_kv_heads * shape.head_dim * element


def slots_of(block_ids: list[int], block_size: int, start: int, stop: int) -> list[int]:
    """The cache slots of token positions [start, stop) of a stream with these blocks."""
    return [block_ids[p // block_size] * block_size + p % block_size for p in range(start, stop)]


@dataclass
class StepBatch:
    """What one forward computes: for each row, its new tokens, and where every key lives.

    Rows are streams; row r computes ``query_lengths[r]`` new tokens at the end of a context of
    ``context_lengths[r]`` tokens (the new ones included). Tokens are flattened row after row.
    Attention reads the keys either through a gather (the SDPA inputs) or, at a decode step on a
    GPU, through the Triton kernel (the block tables); a batch holds the inputs of one of the two.
    """

    input_ids: torch.Tensor  # [T] the new tokens of every row
    positions: torch.Tensor  # [T]
    write_slots: torch.Tensor  # [T] where each new token's K and V go
    last_token: torch.Tensor  # [R] flat index of each row's last new token
    row_ends: tuple[int, ...]  # flat index one past each row's last new token
    decode_kernel: bool  # attend with the Triton paged decode kernel (one query per row)
    # the gather + SDPA path (decode_kernel False)
    key_slots: torch.Tensor | None = None  # [R, L_max] the slots of each row's whole context (padding: 0)
    attention_mask: torch.Tensor | None = None  # [R, 1, Q_max, L_max] True where a query may attend a key
    query_index: torch.Tensor | None = None  # [R, Q_max] index into the flat tokens (padding: 0)
    query_valid: torch.Tensor | None = None  # [R, Q_max] bool
    # the decode kernel (decode_kernel True)
    block_tables: torch.Tensor | None = None  # int32 [R, max blocks] each row's block ids (padding: 0)
    context_lengths: torch.Tensor | None = None  # int32 [R]

    def tokens_of_rows(self, num_rows: int) -> int:
        """How many flat tokens the first ``num_rows`` rows hold."""
        return self.row_ends[num_rows - 1] if num_rows > 0 else 0

    @classmethod
    def build(
        cls, rows: list[tuple[list[int], list[int], int]], block_size: int, device, *, decode_kernel: bool = False
    ) -> StepBatch:
        """rows: (block_ids, all token ids of the stream, number of new tokens at its end).
        decode_kernel: use the Triton decode kernel when every row has one new token (GPU)."""
        input_ids, positions, write_slots = [], [], []
        query_lengths, context_lengths = [], []
        for block_ids, tokens, num_new in rows:
            length = len(tokens)
            input_ids += tokens[length - num_new :]
            positions += range(length - num_new, length)
            write_slots += slots_of(block_ids, block_size, length - num_new, length)
            query_lengths.append(num_new)
            context_lengths.append(length)
        starts = torch.tensor([0] + query_lengths[:-1]).cumsum(0)
        decode_kernel = decode_kernel and max(query_lengths) == 1
        attention = (
            _kernel_inputs(rows, context_lengths, device)
            if decode_kernel
            else _gather_inputs(rows, block_size, starts, query_lengths, context_lengths, device)
        )
        to = dict(device=device)
        return cls(
            input_ids=torch.tensor(input_ids, **to),
            positions=torch.tensor(positions, **to),
            write_slots=torch.tensor(write_slots, **to),
            last_token=(starts + torch.tensor(query_lengths) - 1).to(device),
            row_ends=tuple(itertools.accumulate(query_lengths)),
            decode_kernel=decode_kernel,
            **attention,
        )


def _gather_inputs(rows, block_size: int, starts, query_lengths: list[int], context_lengths: list[int], device) -> dict:
    """Each row's key slots, padded, and the [R, 1, Q, L] causal mask over them, for SDPA."""
    num_rows, q_max, l_max = len(rows), max(query_lengths), max(context_lengths)
    q_offsets = torch.arange(q_max)
    query_valid = q_offsets < torch.tensor(query_lengths).unsqueeze(1)
    query_index = torch.where(query_valid, starts.unsqueeze(1) + q_offsets, 0)
    context = torch.tensor(context_lengths).unsqueeze(1)
    query_position = context - torch.tensor(query_lengths).unsqueeze(1) + q_offsets  # [R, Q]
    key_position = torch.arange(l_max)
    mask = (key_position <= query_position.unsqueeze(-1)) & (key_position < context.unsqueeze(-1))
    padded_slots = torch.zeros(num_rows, l_max, dtype=torch.long)
    for row, ((block_ids, _, _), length) in enumerate(zip(rows, context_lengths)):
        padded_slots[row, :length] = torch.tensor(slots_of(block_ids, block_size, 0, length))
    return dict(
        key_slots=padded_slots.to(device),
        attention_mask=mask.unsqueeze(1).to(device),
        query_index=query_index.to(device),
        query_valid=query_valid.to(device),
    )


def _kernel_inputs(rows, context_lengths: list[int], device) -> dict:
    """Each row's block table, padded, and its context length, for the Triton decode kernel."""
    block_tables = torch.zeros(len(rows), max(len(b) for b, _, _ in rows), dtype=torch.int32)
    for row, (block_ids, _, _) in enumerate(rows):
        block_tables[row, : len(block_ids)] = torch.tensor(block_ids, dtype=torch.int32)
    return dict(
        block_tables=block_tables.to(device),
        context_lengths=torch.tensor(context_lengths, dtype=torch.int32, device=device),
    )


def paged_attention(q, k, v, cache: PagedKVCache, layer: int, batch: StepBatch, scale: float) -> torch.Tensor:
    """Write the new k, v [T, Hkv, D] into the pool, then attend q [T, H, D] over each row's
    context; returns [T, H, D]. Decode steps on a GPU read the pool in place with the Triton
    kernel (steer_kernels.paged_attention); otherwise a gather of each row's keys and torch SDPA."""
    cache.k[layer, batch.write_slots] = k.to(cache.k.dtype)
    cache.v[layer, batch.write_slots] = v.to(cache.v.dtype)
    if batch.decode_kernel:
        from steer_kernels.paged_attention import paged_decode_attention

        return paged_decode_attention(
            q, cache.k[layer], cache.v[layer], batch.block_tables, batch.context_lengths,
            block_size=cache.block_size, scale=scale,
        )
    keys = cache.k[layer, batch.key_slots].transpose(1, 2).to(q.dtype)  # [R, Hkv, L, D]
    values = cache.v[layer, batch.key_slots].transpose(1, 2).to(q.dtype)
    queries = q[batch.query_index].transpose(1, 2)  # [R, H, Q, D]
    groups = queries.shape[1] // keys.shape[1]
    if groups > 1:
        keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=batch.attention_mask, scale=scale)
    out = out.transpose(1, 2)  # [R, Q, H, D]
    return out[batch.query_valid]  # [T, H, D], rows in flat order


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
    post_attention_norm: torch.nn.Module
    gate: Projection
    up: Projection
    down: Projection
    act: torch.nn.Module


class LlamaFamilyRunner:
    """Llama, Mistral, Qwen2: pre-norm blocks, rotary positions, grouped-query attention."""

    def __init__(self, model) -> None:
        self.model = model
        self.decoder = model.model
        config = model.config
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.kv_shape = KVShape(config.num_hidden_layers, self.num_kv_heads, self.head_dim)
        read = ProjectionReader(model)
        self.layers = []
        for index, layer in enumerate(self.decoder.layers):
            attention, mlp, name = layer.self_attn, layer.mlp, f"model.layers.{index}"
            self.layers.append(LlamaLayer(
                layer.input_layernorm,
                *(read(getattr(attention, p), f"{name}.self_attn.{p}") for p in ("q_proj", "k_proj", "v_proj", "o_proj")),
                attention.scaling,
                layer.post_attention_layernorm,
                *(read(getattr(mlp, p), f"{name}.mlp.{p}") for p in ("gate_proj", "up_proj", "down_proj")),
                mlp.act_fn,
            ))
        self.lm_head = read(model.lm_head, "lm_head")
        read.check_all_adapters_covered()
        self.has_adapters = read.has_adapters

    def _attention(self, index: int, layer: LlamaLayer, x, cos, sin, cache, batch, adapter_tokens: int):
        tokens = x.shape[0]
        q = layer.q(x, adapter_tokens).view(tokens, self.num_heads, self.head_dim)
        k = layer.k(x, adapter_tokens).view(tokens, self.num_kv_heads, self.head_dim)
        v = layer.v(x, adapter_tokens).view(tokens, self.num_kv_heads, self.head_dim)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        out = paged_attention(q, k, v, cache, index, batch, layer.scaling)
        return layer.o(out.reshape(tokens, self.num_heads * self.head_dim), adapter_tokens)

    @staticmethod
    def _mlp(layer: LlamaLayer, x, adapter_tokens: int):
        return layer.down(layer.act(layer.gate(x, adapter_tokens)) * layer.up(x, adapter_tokens), adapter_tokens)

    @torch.no_grad()
    def forward(self, cache: PagedKVCache, batch: StepBatch, adapter_rows: int = 0) -> torch.Tensor:
        """Logits [R, V] (float32) after each row's last new token; LoRA adapters (if any) apply to
        the first ``adapter_rows`` rows."""
        adapter_tokens = batch.tokens_of_rows(adapter_rows)
        x = self.decoder.embed_tokens(batch.input_ids)
        cos, sin = self.decoder.rotary_emb(x.unsqueeze(0), batch.positions.unsqueeze(0))
        cos, sin = cos[0].unsqueeze(1).to(x.dtype), sin[0].unsqueeze(1).to(x.dtype)  # [T, 1, D]
        for index, layer in enumerate(self.layers):
            x = x + self._attention(index, layer, layer.input_norm(x), cos, sin, cache, batch, adapter_tokens)
            x = x + self._mlp(layer, layer.post_attention_norm(x), adapter_tokens)
        last = self.decoder.norm(x[batch.last_token])
        return self.lm_head(last, adapter_rows).float()


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
    """GPT-2: learned positions, LayerNorm, fused QKV projection (Conv1D), tied LM head."""

    def __init__(self, model) -> None:
        self.model = model
        self.transformer = model.transformer
        config = model.config
        if config.scale_attn_by_inverse_layer_idx or config.reorder_and_upcast_attn:
            raise ValueError("GPT-2 with scale_attn_by_inverse_layer_idx or reorder_and_upcast_attn is not supported")
        self.num_heads = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.scale = 1.0 / math.sqrt(self.head_dim) if config.scale_attn_weights else 1.0
        self.kv_shape = KVShape(config.n_layer, self.num_heads, self.head_dim)
        read = ProjectionReader(model)
        self.layers = [
            GPT2Layer(
                block.ln_1, read(block.attn.c_attn, f"transformer.h.{i}.attn.c_attn"),
                read(block.attn.c_proj, f"transformer.h.{i}.attn.c_proj"), block.ln_2,
                read(block.mlp.c_fc, f"transformer.h.{i}.mlp.c_fc"), block.mlp.act,
                read(block.mlp.c_proj, f"transformer.h.{i}.mlp.c_proj"),
            )
            for i, block in enumerate(self.transformer.h)
        ]
        self.lm_head = read(model.lm_head, "lm_head")
        read.check_all_adapters_covered()
        self.has_adapters = read.has_adapters

    def _attention(self, index: int, layer: GPT2Layer, x, cache, batch, adapter_tokens: int):
        tokens = x.shape[0]
        q, k, v = layer.qkv(x, adapter_tokens).split(self.num_heads * self.head_dim, dim=-1)
        shape = (tokens, self.num_heads, self.head_dim)
        out = paged_attention(q.reshape(shape), k.reshape(shape), v.reshape(shape), cache, index, batch, self.scale)
        return layer.attention_out(out.reshape(tokens, self.num_heads * self.head_dim), adapter_tokens)

    @torch.no_grad()
    def forward(self, cache: PagedKVCache, batch: StepBatch, adapter_rows: int = 0) -> torch.Tensor:
        adapter_tokens = batch.tokens_of_rows(adapter_rows)
        x = self.transformer.wte(batch.input_ids) + self.transformer.wpe(batch.positions)
        for index, layer in enumerate(self.layers):
            x = x + self._attention(index, layer, layer.ln_1(x), cache, batch, adapter_tokens)
            hidden = layer.act(layer.fc(layer.ln_2(x), adapter_tokens))
            x = x + layer.mlp_out(hidden, adapter_tokens)
        last = self.transformer.ln_f(x[batch.last_token])
        return self.lm_head(last, adapter_rows).float()


class ProjectionReader:
    """Reads a model's linear modules into Projections, remembering which ones it read so that an
    adapter anywhere else is refused rather than silently ignored."""

    def __init__(self, model) -> None:
        self.model, self.covered, self.has_adapters = model, set(), False

    def __call__(self, module, name: str) -> Projection:
        self.covered.add(id(module))
        projection = projection_of(module, name)
        self.has_adapters |= bool(projection.deltas)
        return projection

    def check_all_adapters_covered(self) -> None:
        check_adapters_covered(self.model, self.covered)


def _inner_model(model):
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def unsupported_reason(model, longest_context: int | None = None) -> str | None:
    """Why the engine cannot run this model exactly, or None when it can. A sliding window only
    matters when a stream can be longer than it (``longest_context``; default the model's limit)."""
    config = _inner_model(model).config
    model_type = getattr(config, "model_type", None)
    if model_type not in LLAMA_FAMILY + GPT2_FAMILY:
        return f"the engine has no forward for {model_type} models"
    window = getattr(config, "sliding_window", None)
    windowed = isinstance(window, int) and (model_type != "qwen2" or getattr(config, "use_sliding_window", False))
    if windowed and window < (longest_context or getattr(config, "max_position_embeddings", window + 1)):
        return f"the engine does not apply {model_type}'s sliding window ({window} tokens) yet"
    return None


def runner_for(model) -> LlamaFamilyRunner | GPT2Runner:
    """The paged runner of a Hugging Face causal LM (the inner model of a PEFT wrapper)."""
    inner = _inner_model(model)
    model_type = getattr(inner.config, "model_type", None)
    if model_type in LLAMA_FAMILY:
        return LlamaFamilyRunner(inner)
    if model_type in GPT2_FAMILY:
        return GPT2Runner(inner)
    raise ValueError(
        f"the steer engine runs {LLAMA_FAMILY + GPT2_FAMILY} models, got model_type={model_type!r}; "
        "use steer.SteerLogitsProcessor with model.generate for other architectures"
    )
