"""Tiny random Hugging Face causal LMs built from configs: no downloads, a few KB of weights.

float64 keeps batched-and-padded forwards equal to unbatched ones far below float32 rounding, so
greedy token-for-token comparisons test the algorithm, not numerical noise.
"""

from __future__ import annotations

import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    SmolLM3Config,
    SmolLM3ForCausalLM,
)

VOCAB = 96
BOS, EOS, PAD = 1, 2, 0


def _finish(model):
    return model.to(torch.float64).eval()


# Sliding windows shorter than the tests' contexts (prompts + negatives + 10 new tokens), so a
# missing or off-by-one window changes the tokens.
WINDOW = 5


def _llama_like(config_class, model_class, seed: int, vocab_size: int, **extra):
    """Llama, Mistral and Qwen2 share their config fields: RMSNorm, rotary positions, grouped-query attention."""
    torch.manual_seed(seed)
    config = config_class(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, initializer_range=0.2, **extra,
    )
    return _finish(model_class(config))


def tiny_mistral(seed: int = 0, vocab_size: int = VOCAB, window: int = WINDOW):
    """Mistral with a window of WINDOW keys in every layer."""
    return _llama_like(MistralConfig, MistralForCausalLM, seed, vocab_size, sliding_window=window)


def tiny_qwen2_windowed(seed: int = 0, vocab_size: int = VOCAB, window: int = WINDOW):
    """Qwen2 with use_sliding_window: a full-attention first layer, a windowed second one."""
    return _llama_like(
        Qwen2Config, Qwen2ForCausalLM, seed, vocab_size, use_sliding_window=True, sliding_window=window, max_window_layers=1
    )


def tiny_llama(seed: int = 0, vocab_size: int = VOCAB):
    return _llama_like(LlamaConfig, LlamaForCausalLM, seed, vocab_size)


def tiny_qwen2(seed: int = 0, vocab_size: int = VOCAB):
    return _llama_like(Qwen2Config, Qwen2ForCausalLM, seed, vocab_size)


def tiny_gpt2(seed: int = 0, vocab_size: int = VOCAB):
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=256,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, initializer_range=0.2,
    )
    return _finish(GPT2LMHeadModel(config))


def tiny_llama3(seed: int = 0, vocab_size: int = VOCAB):
    """Llama 3.1's rope scaling (factor 8, low / high frequency factors)."""
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64, "rope_theta": 500000.0}  # fmt: skip
    return _llama_like(LlamaConfig, LlamaForCausalLM, seed, vocab_size, rope_parameters=rope)


def tiny_qwen3(seed: int = 0, vocab_size: int = VOCAB, window: int = WINDOW):
    """Qwen3: q/k norms per head; a full first layer and a WINDOW-key second one."""
    return _llama_like(Qwen3Config, Qwen3ForCausalLM, seed, vocab_size, head_dim=8, use_sliding_window=True,
                       sliding_window=window, max_window_layers=1)  # fmt: skip


def tiny_gemma2(seed: int = 0, vocab_size: int = VOCAB, window: int = WINDOW):
    """Gemma 2: a WINDOW-key layer then a global one, attention and final-logit soft caps, pre- and
    post-norms, scaled embeddings, query_pre_attn_scalar."""
    return _llama_like(Gemma2Config, Gemma2ForCausalLM, seed, vocab_size, head_dim=8, sliding_window=window,
                       attn_logit_softcapping=3.0, final_logit_softcapping=5.0, query_pre_attn_scalar=8)  # fmt: skip


def tiny_gemma3(seed: int = 0, vocab_size: int = VOCAB, window: int = WINDOW):
    """Gemma 3 text: q/k norms, a local (WINDOW keys, its own rope base) and a global layer."""
    return _llama_like(Gemma3TextConfig, Gemma3ForCausalLM, seed, vocab_size, head_dim=8, sliding_window=window,
                       query_pre_attn_scalar=8, layer_types=["sliding_attention", "full_attention"])  # fmt: skip


def tiny_phi3(seed: int = 0, vocab_size: int = VOCAB, window: int = WINDOW):
    """Phi-3: fused qkv and gate-up projections, a WINDOW-key window."""
    return _llama_like(Phi3Config, Phi3ForCausalLM, seed, vocab_size, sliding_window=window)


def tiny_olmo2(seed: int = 0, vocab_size: int = VOCAB):
    """OLMo 2: post-norms only, q/k norms over the whole projection."""
    return _llama_like(Olmo2Config, Olmo2ForCausalLM, seed, vocab_size)


def tiny_smollm3(seed: int = 0, vocab_size: int = VOCAB):
    """SmolLM3: its second layer without rotary positions."""
    return _llama_like(SmolLM3Config, SmolLM3ForCausalLM, seed, vocab_size, no_rope_layers=[1, 0])


BUILDERS = {
    "gpt2": tiny_gpt2, "llama": tiny_llama, "qwen2": tiny_qwen2, "mistral": tiny_mistral, "qwen2_windowed": tiny_qwen2_windowed,
    "llama3": tiny_llama3, "qwen3": tiny_qwen3, "gemma2": tiny_gemma2, "gemma3": tiny_gemma3, "phi3": tiny_phi3,
    "olmo2": tiny_olmo2, "smollm3": tiny_smollm3,
}
# The families the engine runs through their own transformers layers (engine/models/hf_layers.py).
HF_LAYER_ARCHS = ["qwen3", "gemma2", "gemma3", "phi3", "olmo2", "smollm3"]


# The architectures whose builders take a sliding ``window`` (WINDOW keys unless told).
WINDOWED = {"mistral", "qwen2_windowed", "qwen3", "gemma2", "gemma3", "phi3"}


def expert_and_base(arch: str, window: int | None = None):
    """Two different random models of one architecture and tokenizer: an 'expert' and its 'base'
    (``window``: their sliding window, for the windowed architectures; WINDOW keys by default)."""
    options = {"window": window} if window is not None and arch in WINDOWED else {}
    return BUILDERS[arch](seed=1, **options), BUILDERS[arch](seed=2, **options)


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt) :] = torch.tensor(prompt)
        mask[row, length - len(prompt) :] = 1
    return ids, mask


LORA_TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"],
    "qwen2": ["q_proj", "v_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "llama3": ["q_proj", "v_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],  # LoRA on the fused modules
    "olmo2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "smollm3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def lora_expert_and_base(arch: str, **lora_options):
    """(PEFT LoRA expert, an untouched copy of its base): random, non-zero adapters, so the expert
    differs from the base; the copy is what the expert computes with its adapters switched off."""
    import copy

    from peft import LoraConfig, get_peft_model

    base = BUILDERS[arch](seed=2)
    torch.manual_seed(3)
    options = dict(r=4, lora_alpha=8, lora_dropout=0.1, init_lora_weights=False, target_modules=LORA_TARGETS[arch])
    options.update(lora_options)
    if arch == "gpt2":
        options["fan_in_fan_out"] = True
    expert = get_peft_model(copy.deepcopy(base), LoraConfig(**options)).to(torch.float64).eval()
    return expert, base
