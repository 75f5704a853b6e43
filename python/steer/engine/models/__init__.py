"""One file per model family: how to run its decoder over a step batch with paged attention.

Each runner reads its weights from the module the user passed and offers ``kv_shape``,
``has_adapters``, ``lm_head`` (a Projection) and ``last_hidden(attention, batch, adapter_rows)``:
the final-normed hidden state after each row's last new token.
"""

from __future__ import annotations

from steer.engine.models import gpt2, hf_layers, llama
from steer.model_info import hf_module

FAMILIES = {model_type: module for module in (llama, gpt2, hf_layers) for model_type in module.MODEL_TYPES}
RUNNERS = {llama: llama.LlamaFamilyRunner, gpt2: gpt2.GPT2Runner, hf_layers: hf_layers.HFLayersRunner}


def supported_model_types() -> tuple[str, ...]:
    return tuple(FAMILIES)


def unsupported_reason(model, longest_context: int | None = None) -> str | None:
    """Why the engine cannot run this model, or None when it can (``longest_context`` is kept
    for callers that plan around windows: every window the families here have is applied)."""
    model_type = getattr(hf_module(model).config, "model_type", None)
    if model_type not in FAMILIES:
        return f"the engine has no forward for {model_type} models"
    return None


def per_example_kv_unsupported(model) -> str | None:
    """Why the engine cannot move this model's cached keys to another position (so cannot run
    SteerConfig.per_example_kv), or None when it can; read from the model, no runner built."""
    from steer.engine.models.rotary import unsupported_reason as rotary_reason

    inner = hf_module(model)
    if getattr(inner.config, "model_type", None) == "gpt2":
        return "GPT-2's positions are learned absolute embeddings, which cached keys cannot be moved along"
    rotary_emb = getattr(inner.get_decoder(), "rotary_emb", None)
    if rotary_emb is None:
        return "the model has no rotary position embedding to re-rotate cached keys with"
    return rotary_reason(rotary_emb)


def runner_for(model, *, merge_adapters: bool = False, fuse_projections: bool = False):
    """The paged runner of a Hugging Face causal LM (the inner model of a PEFT wrapper);
    ``merge_adapters``: its LoRA projections keep a merged copy (steer.engine.projection);
    ``fuse_projections``: the Llama family's q/k/v and gate/up run fused (the other families run
    their modules' own layout)."""
    inner = hf_module(model)
    model_type = getattr(inner.config, "model_type", None)
    family = FAMILIES.get(model_type)
    if family is None:
        raise ValueError(
            f"the steer engine runs {supported_model_types()} models, got model_type={model_type!r}; "
            "use steer.SteerLogitsProcessor with model.generate for other architectures"
        )
    if family is llama:
        return RUNNERS[family](inner, merge_adapters=merge_adapters, fuse_projections=fuse_projections)
    return RUNNERS[family](inner, merge_adapters=merge_adapters)
