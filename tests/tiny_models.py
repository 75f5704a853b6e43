"""Tiny random Hugging Face causal LMs built from configs: no downloads, a few KB of weights.

float64 keeps batched-and-padded forwards equal to unbatched ones far below float32 rounding, so
greedy token-for-token comparisons test the algorithm, not numerical noise.
"""

from __future__ import annotations

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
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


def tiny_mistral(seed: int = 0, vocab_size: int = VOCAB):
    """Mistral with a window of WINDOW keys in every layer."""
    return _llama_like(MistralConfig, MistralForCausalLM, seed, vocab_size, sliding_window=WINDOW)


def tiny_qwen2_windowed(seed: int = 0, vocab_size: int = VOCAB):
    """Qwen2 with use_sliding_window: a full-attention first layer, a windowed second one."""
    return _llama_like(
        Qwen2Config, Qwen2ForCausalLM, seed, vocab_size, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1
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


BUILDERS = {
    "gpt2": tiny_gpt2, "llama": tiny_llama, "qwen2": tiny_qwen2, "mistral": tiny_mistral, "qwen2_windowed": tiny_qwen2_windowed,
}


def expert_and_base(arch: str):
    """Two different random models of one architecture and tokenizer: an 'expert' and its 'base'."""
    return BUILDERS[arch](seed=1), BUILDERS[arch](seed=2)


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
