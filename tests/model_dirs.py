"""Tiny model directories on disk, as ``steer generate`` takes them: a character-level tokenizer
(built offline with the tokenizers library) and random Llama expert/base models or a LoRA adapter.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

CHARACTERS = string.ascii_letters + string.digits + " .,!?'-"
REAL_TEXTS = ["hello world", "the cat sat", "foo bar baz", "another one", "fine weather today"]  # a tiny real set


def character_tokenizer(extra: str = ""):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2}
    for character in CHARACTERS + extra:
        vocab.setdefault(character, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def _llama(vocab_size: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        initializer_range=0.2,
    )
    return LlamaForCausalLM(config).eval()


def save_expert_and_base(root: Path, *, tokenizer=None) -> tuple[Path, Path]:
    """Two random Llama models sharing one character tokenizer, saved as expert/ and base/."""
    tokenizer = tokenizer or character_tokenizer()
    paths = []
    for name, seed in (("expert", 1), ("base", 2)):
        path = root / name
        _llama(len(tokenizer), seed).save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(path)
    return paths[0], paths[1]


def save_lora_adapter(root: Path, base_dir: Path, targets=("q_proj", "v_proj", "down_proj")) -> Path:
    """A random LoRA adapter over ``base_dir`` (its adapter_config names base_dir) on ``targets``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False))
    path = root / "adapter"
    model.save_pretrained(path)
    return path


def _tiny_config(arch: str, vocab_size: int):
    """A tiny random config of a family (OPT and GPT-NeoX: the engine has no forward for them):
    each small enough to build in milliseconds."""
    import transformers

    common = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "opt":
        return transformers.OPTConfig(**common, ffn_dim=64, word_embed_proj_dim=32)
    if arch == "gpt_neox":
        return transformers.GPTNeoXConfig(**common, intermediate_size=64)
    common.update(intermediate_size=64, num_key_value_heads=2)
    configs = {
        "qwen3": lambda: transformers.Qwen3Config(**common, head_dim=8),
        "gemma2": lambda: transformers.Gemma2Config(**common, head_dim=8, sliding_window=8, query_pre_attn_scalar=8),
        "phi3": lambda: transformers.Phi3Config(**common, original_max_position_embeddings=256),
        "mistral": lambda: transformers.MistralConfig(**common, sliding_window=8),
    }
    return configs[arch]()


def save_model_pair(root: Path, arch: str, *, tokenizer=None) -> tuple[Path, Path]:
    """Random ``arch`` expert/ and base/ models (different seeds) sharing one character tokenizer."""
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizer or character_tokenizer()
    paths = []
    for name, seed in (("expert", 1), ("base", 2)):
        torch.manual_seed(seed)
        path = root / name
        AutoModelForCausalLM.from_config(_tiny_config(arch, len(tokenizer))).eval().save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(path)
    return paths[0], paths[1]
