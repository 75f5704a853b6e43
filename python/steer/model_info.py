"""What steer reads from a Hugging Face model besides its weights: the module under a PEFT
wrapper, the vocabulary two models share, how many positions a model takes, and the sliding
window of each attention layer.

Below both the drop-in processor (``steer.hf``) and the engine, so neither imports the other.
"""

from __future__ import annotations


def hf_module(model):
    """The transformers module whose forward ``generate`` calls (the inner model of a PEFT wrapper)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def context_length(model_config) -> int | None:
    """The most positions a model takes, from its config (an object or a config.json dict;
    n_positions or n_ctx for GPT-2 style configs); None when the config states no limit."""
    get = model_config.get if isinstance(model_config, dict) else lambda name: getattr(model_config, name, None)
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = get(name)
        if _is_positive_int(value):
            return value
    return None


def sliding_windows(model_config, num_layers: int) -> list[int | None]:
    """Per layer, the keys a query may see (its own included), or None for full attention.

    ``layer_types`` names each layer's kind where the config has it (Qwen2, Gemma, ...: a
    "sliding_attention" layer uses ``sliding_window``); otherwise a ``sliding_window`` applies to
    every layer (Mistral). Qwen2 with ``use_sliding_window`` false has none at all."""
    window = getattr(model_config, "sliding_window", None)
    if not _is_positive_int(window) or getattr(model_config, "use_sliding_window", True) is False:
        return [None] * num_layers
    kinds = getattr(model_config, "layer_types", None)
    if kinds is None:
        return [window] * num_layers
    return [window if kind == "sliding_attention" else None for kind in kinds]


def _lm_head_rows(model) -> int:
    head = model.get_output_embeddings()
    return head.weight.shape[0] if head is not None else model.config.vocab_size


def _special_token_ids(model) -> dict[str, int]:
    found = {}
    for source in (model.config, getattr(model, "generation_config", None)):
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(source, name, None)
            if value is not None and name not in found:
                found[name] = value
    return found


def shared_vocabulary_size(expert, base, vocab_size: int | None) -> int:
    """The vocabulary STEER combines over; a ValueError if expert and base do not share a tokenizer."""
    expert_rows, base_rows = _lm_head_rows(expert), _lm_head_rows(base)
    expert_special, base_special = _special_token_ids(expert), _special_token_ids(base)
    for name in expert_special.keys() & base_special.keys():
        if expert_special[name] != base_special[name]:
            raise ValueError(
                f"expert and base do not share a tokenizer: expert {name}={expert_special[name]}, "
                f"base {name}={base_special[name]}"
            )
    if vocab_size is None:
        if expert_rows != base_rows:
            raise ValueError(
                f"expert and base have different vocabularies ({expert_rows} vs {base_rows} LM-head rows). "
                "If they share a tokenizer and one head is padded, pass vocab_size=len(tokenizer)."
            )
        return expert_rows
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 1 <= vocab_size <= min(expert_rows, base_rows):
        raise ValueError(f"vocab_size must be an int in [1, {min(expert_rows, base_rows)}], got {vocab_size!r}")
    return vocab_size
