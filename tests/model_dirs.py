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


def save_lora_adapter(root: Path, base_dir: Path) -> Path:
    """A random LoRA adapter over ``base_dir`` (its adapter_config names base_dir)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    path = root / "adapter"
    model.save_pretrained(path)
    return path
