"""Loading the bundled demo models (``models/``) and the real jokes the demo compares against.

The expert is returned as one ``peft.PeftModel`` (base + LoRA adapter): the steer engine runs
it as expert and base in one forward (``SteerEngine(expert)`` with the adapter switched off for
the base rows), and ``with expert.disable_adapter():`` gives the base for plain ``generate``.
Everything loads from the package directory, never from the network.
"""

from __future__ import annotations

from pathlib import Path

import torch

MODELS_DIR = Path(__file__).parent / "models"


def demo_base_dir() -> Path:
    """The base model: config.json, model.safetensors (fp16), generation_config.json, tokenizer."""
    return MODELS_DIR / "base"


def demo_expert_dir() -> Path:
    """The expert's LoRA adapter (adapter_config.json, adapter_model.safetensors) and tokenizer."""
    return MODELS_DIR / "expert"


def load_demo_expert(dtype: torch.dtype = torch.float32):
    """``(tokenizer, expert)``: the demo tokenizer and the expert as a ``PeftModel`` in eval mode.

    The base weights are stored in fp16 and cast to ``dtype`` on loading; float32 (the default)
    reproduces the training-time behaviour. Needs ``peft`` (``pip install peft`` or the
    ``steer[peft]`` extra). The tokenizer adds no bos/eos itself: prompts start with
    ``tokenizer.bos_token_id`` and samples end at ``tokenizer.eos_token_id``.
    """
    try:
        from peft import PeftModel
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise RuntimeError("the demo expert is a LoRA adapter and needs peft: pip install peft") from error
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir, expert_dir = demo_base_dir(), demo_expert_dir()
    if not (base_dir / "model.safetensors").is_file() or not (expert_dir / "adapter_model.safetensors").is_file():
        raise FileNotFoundError(
            f"the demo models are missing under {MODELS_DIR}; rebuild them with scripts/train_demo_models.py"
        )
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True, trust_remote_code=False)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, local_files_only=True, trust_remote_code=False, use_safetensors=True)
    expert = PeftModel.from_pretrained(base, expert_dir, local_files_only=True)
    return tokenizer, expert.eval()


def demo_real_examples() -> list[str]:
    """The real programmer jokes the expert was trained on: pyjokes' English jokes (all
    categories), read from the installed ``pyjokes`` package (BSD-3-Clause), not shipped here."""
    try:
        import pyjokes
    except ImportError as error:
        raise RuntimeError(
            "the demo compares its samples with the pyjokes jokes, but pyjokes is not installed: pip install pyjokes"
        ) from error
    return list(pyjokes.get_jokes(language="en", category="all"))
