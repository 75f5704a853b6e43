"""The families run through their own transformers layers (engine/models/hf_layers.py): the user's
model is left as it was, and what the shadow cannot run is refused by name."""

import pytest
import torch
from tiny_models import EOS, HF_LAYER_ARCHS, expert_and_base, lora_expert_and_base

from steer import Request, SteerConfig
from steer.engine.engine import SteerEngine
from steer.engine.models import runner_for
from steer.engine.models.hf_layers import HFLayersRunner, ProjectionModule


@pytest.mark.parametrize("arch", HF_LAYER_ARCHS)
def test_the_users_model_is_not_touched(arch):
    expert, base = expert_and_base(arch)
    ids = torch.tensor([[5, 6, 7, 8]])
    before = expert(ids).logits
    implementation = expert.config._attn_implementation
    modules = {name: type(module) for name, module in expert.named_modules()}
    engine = SteerEngine(expert, base, config=SteerConfig(temperature=0.0, max_new_tokens=4), block_size=4)
    engine.generate([Request([5, 6, 7], [[20, 21]], 4, eos_token_id=EOS)])
    assert expert.config._attn_implementation == implementation
    assert {name: type(module) for name, module in expert.named_modules()} == modules
    assert torch.equal(expert(ids).logits, before)


def test_the_shadow_shares_the_parameters_and_replaces_every_linear_module():
    expert, _ = lora_expert_and_base("phi3")
    runner = runner_for(expert)
    assert isinstance(runner, HFLayersRunner) and runner.has_adapters
    shadow_modules = dict(runner.decoder.named_modules())
    assert not any(isinstance(m, torch.nn.Linear) for m in shadow_modules.values())
    fused = shadow_modules["layers.0.self_attn.qkv_proj"]
    assert isinstance(fused, ProjectionModule) and fused.projection.deltas  # LoRA on the fused module
    original = expert.get_base_model().model.layers[0].self_attn.qkv_proj.base_layer.weight
    assert fused.projection.weight.data_ptr() == original.data_ptr()  # shared, not copied
    norm = shadow_modules["layers.0.input_layernorm"]
    assert norm.weight is expert.get_base_model().model.layers[0].input_layernorm.weight


def test_a_peft_copy_module_is_refused_by_name():
    pytest.importorskip("peft")
    with pytest.raises(ValueError, match="modules_to_save"):
        lora = lora_expert_and_base("qwen3", modules_to_save=["input_layernorm"])[0]
        runner_for(lora)
