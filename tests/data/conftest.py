"""Model directories shared by the dataset tests: built once per session (a few seconds)."""

from __future__ import annotations

import json

import pytest
from model_dirs import REAL_TEXTS, save_expert_and_base, save_lora_adapter


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Random Llama expert/ and base/ sharing a character tokenizer, a LoRA adapter/ over the base,
    and real.jsonl holding REAL_TEXTS (with an extra field, as real datasets have)."""
    root = tmp_path_factory.mktemp("models")
    expert, base = save_expert_and_base(root)
    adapter = save_lora_adapter(root, base)
    real = root / "real.jsonl"
    real.write_text("".join(json.dumps({"text": t, "label": i}) + "\n" for i, t in enumerate(REAL_TEXTS)))
    return {"expert": expert, "base": base, "adapter": adapter, "real": real, "root": root}
