"""Offline demo assets: two tiny models shipped inside the package, for ``steer demo``.

``models/base/`` is a 2.4M-parameter Llama trained from scratch on Debian's fortune cookies (no
programmer jokes); ``models/expert/`` is a LoRA adapter for it, fine-tuned on the pyjokes
programmer jokes. The expert-vs-base contrast STEER amplifies is therefore "programmer-joke-ness".
Both load in a second and generate on a laptop CPU; ``models/SOURCES.md`` documents the corpora,
their licences and the training run, and ``scripts/train_demo_models.py`` reproduces them.

Texts are ``[bos] + tokens + [eos]``: the tokenizer adds no special tokens itself, so a demo
prompt is ``[tokenizer.bos_token_id]`` and a sample ends at ``tokenizer.eos_token_id``.

    >>> from steer.demo.models import load_demo_expert
    >>> tokenizer, expert = load_demo_expert()   # PeftModel; `with expert.disable_adapter():` is the base
"""

from steer.demo.models import MODELS_DIR, demo_base_dir, demo_expert_dir, demo_real_examples, load_demo_expert

__all__ = ["MODELS_DIR", "demo_base_dir", "demo_expert_dir", "demo_real_examples", "load_demo_expert"]
