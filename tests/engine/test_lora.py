"""Expert = base + LoRA in one forward: the adapters apply to the expert's rows only."""

import copy

import pytest
import torch
from tiny_models import EOS, HF_LAYER_ARCHS, lora_expert_and_base, tiny_llama

from steer import SteerConfig
from steer.engine.engine import SteerEngine
from steer.engine.models import runner_for
from steer.engine.projection import Projection, fuse_projections, projection_of
from steer.engine.sequence import Request
from steer.hf.uncached import steer_generate_uncached

pytest.importorskip("peft")

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [3, 4, 5, 6, 7, 8, 12, 13, 14]]
NEGATIVES = [[[20, 21, 22, 23]], [[30, 31], [40, 41, 42, 43], [44]], [[50]]]
NEW = 8


def requests():
    return [Request(p, n, NEW, eos_token_id=EOS) for p, n in zip(PROMPTS, NEGATIVES)]


def assert_is_the_formula(results, expert, base, gamma, eta):
    for row, result in enumerate(results):
        negatives = [torch.tensor(n) for n in NEGATIVES[row]]
        want = steer_generate_uncached(
            expert, base, torch.tensor(PROMPTS[row]), negatives, gamma=gamma, eta=eta, max_new_tokens=NEW, eos_token_id=EOS
        )
        assert result.token_ids == want.tolist(), f"row {row}"


@pytest.mark.parametrize("arch", ["gpt2", "llama", "llama3", "qwen2", *HF_LAYER_ARCHS])
def test_lora_expert_without_base_is_the_formula_in_one_forward_per_step(arch, monkeypatch):
    expert, base = lora_expert_and_base(arch)
    config = SteerConfig(gamma=0.6, eta=0.5, temperature=0.0, max_new_tokens=NEW)
    engine = SteerEngine(expert, config=config, block_size=4, kv_cache_memory=2**22)
    assert len(engine.passes) == 1
    runner = engine.passes[0][0]
    forwards = []
    original = runner.last_hidden
    monkeypatch.setattr(runner, "last_hidden", lambda *a, **k: forwards.append(k["adapter_rows"]) or original(*a, **k))
    results = engine.generate(requests())
    assert_is_the_formula(results, expert, base, 0.6, 0.5)
    assert len(forwards) == max(len(r.token_ids) for r in results)  # one forward per step
    # The first step: all 3 groups' prompt + negative rows get the adapter, their 3 base rows do not.
    assert forwards[0] == 3 + sum(len(n) for n in NEGATIVES)


def test_lora_expert_with_an_explicit_base_applies_the_adapter_to_every_expert_row():
    expert, base = lora_expert_and_base("llama")
    config = SteerConfig(gamma=0.4, eta=0.7, temperature=0.0, max_new_tokens=NEW)
    engine = SteerEngine(expert, base, config=config, block_size=4)
    assert len(engine.passes) == 2
    assert_is_the_formula(engine.generate(requests()), expert, base, 0.4, 0.7)


def test_lora_bias_and_several_active_adapters_are_applied_as_peft_does():
    from peft import LoraConfig

    expert, base = lora_expert_and_base("llama", lora_bias=True)
    torch.manual_seed(4)
    expert.add_adapter("second", LoraConfig(r=2, init_lora_weights=False, target_modules=["o_proj", "up_proj"]))
    expert.base_model.set_adapter(["default", "second"])
    expert.to(torch.float64)
    config = SteerConfig(gamma=0.5, eta=0.5, temperature=0.0, max_new_tokens=NEW)
    results = SteerEngine(expert, config=config, block_size=4).generate(requests())
    assert_is_the_formula(results, expert, base, 0.5, 0.5)


def test_projection_adds_the_delta_to_the_leading_rows_only():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5))
    peft_model = get_peft_model(model, LoraConfig(r=2, init_lora_weights=False, target_modules=["0"]))
    layer = peft_model.base_model.model[0]
    projection = projection_of(layer, "0")
    x = torch.randn(4, 6)
    with torch.no_grad():
        adapted = layer(x)
        plain = layer.base_layer(x)
        got = projection(x, adapter_tokens=3)
    torch.testing.assert_close(got[:3], adapted[:3])
    torch.testing.assert_close(got[3:], plain[3:])
    assert isinstance(projection, Projection) and len(projection.deltas) == 1


@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "conv1d"])
def test_a_merged_projection_gives_the_delta_path_numbers_for_any_split(conv1d):
    """Merged copy (W + s B A, bias + s b_B) for uniform calls, the delta for mixed ones: the
    numbers of PEFT's layer either way, in both weight layouts, with a LoRA bias."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = torch.nn.Sequential(Conv1D(5, 6) if conv1d else torch.nn.Linear(6, 5))
    config = LoraConfig(r=2, lora_alpha=3, init_lora_weights=False, target_modules=["0"], lora_bias=True, fan_in_fan_out=conv1d)
    layer = get_peft_model(model, config).base_model.model[0]
    merged = projection_of(layer, "0", merge_adapters=True)
    assert merged.merged_weight is not None and merged.merged_weight.shape == merged.weight.shape
    x = torch.randn(4, 6)
    with torch.no_grad():
        adapted, plain = layer(x), layer.base_layer(x)
        for split in range(5):
            got = merged(x, adapter_tokens=split)
            torch.testing.assert_close(got[:split], adapted[:split])
            torch.testing.assert_close(got[split:], plain[split:])


def test_merge_adapters_auto_merges_small_float32_models_on_the_cpu_only(monkeypatch):
    import steer.engine.engine as engine_module
    from steer.engine.projection import adapted_weight_bytes

    expert, _ = lora_expert_and_base("llama")
    expert.to(torch.float32)
    first = lambda engine: engine.passes[0][0].layers[0].o  # noqa: E731
    assert first(SteerEngine(expert, block_size=4)).merged_weight is not None
    assert first(SteerEngine(expert, block_size=4, merge_adapters=False)).merged_weight is None
    monkeypatch.setattr(engine_module, "MERGE_ADAPTERS_MAX_BYTES", adapted_weight_bytes(expert) - 1)
    assert first(SteerEngine(expert, block_size=4)).merged_weight is None  # too large to copy
    assert first(SteerEngine(expert, block_size=4, merge_adapters=True)).merged_weight is not None
    half, _ = lora_expert_and_base("llama")
    half.to(torch.bfloat16)
    assert first(SteerEngine(half, block_size=4)).merged_weight is None
    with pytest.raises(ValueError, match="round most of the deltas away"):
        SteerEngine(half, block_size=4, merge_adapters=True)
    with pytest.raises(ValueError, match="merge_adapters must be"):
        SteerEngine(expert, block_size=4, merge_adapters="yes")


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("merge", [True, False], ids=["merged", "delta"])
def test_merged_and_delta_engines_are_both_the_formula(merge, fuse):
    expert, base = lora_expert_and_base("llama")
    config = SteerConfig(gamma=0.6, eta=0.5, temperature=0.0, max_new_tokens=NEW)
    engine = SteerEngine(expert, config=config, block_size=4, merge_adapters=merge, fuse_projections=fuse)
    assert len(engine.passes[0][0].layers[0].qkv) == (1 if fuse else 3)
    assert_is_the_formula(engine.generate(requests()), expert, base, 0.6, 0.5)
    plain = SteerConfig(gamma=0.0, eta=0.0, temperature=0.0, max_new_tokens=NEW)  # every row the expert's: merged copy
    engine = SteerEngine(expert, config=plain, block_size=4, merge_adapters=merge, fuse_projections=fuse)
    assert_is_the_formula(engine.generate(requests()), expert, base, 0.0, 0.0)


def _peft_linears(conv1d: bool):
    """Three PEFT layers reading one input, like q, k and v: two adapted (ranks 2 and 3, different
    alphas, the second with a LoRA bias and a base bias), one plain."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    make = (lambda n_in, n_out: Conv1D(n_out, n_in)) if conv1d else (lambda n_in, n_out: torch.nn.Linear(n_in, n_out, bias=False))
    model = torch.nn.Sequential(make(6, 5), torch.nn.Linear(6, 3) if not conv1d else Conv1D(3, 6), make(6, 4))
    model = get_peft_model(model, LoraConfig(r=2, lora_alpha=3, init_lora_weights=False, target_modules=["0"], fan_in_fan_out=conv1d))
    model.add_adapter("b", LoraConfig(r=3, lora_alpha=12, init_lora_weights=False, target_modules=["1"], lora_bias=True, fan_in_fan_out=conv1d))
    model.base_model.set_adapter(["default", "b"])
    return [model.base_model.model[i] for i in range(3)]


@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "conv1d"])
def test_fused_projections_are_their_parts_side_by_side(conv1d):
    """One matmul for q|k|v (or gate|up), their adapters one delta (A stacked, B block-diagonal,
    a scale per rank column): every split of adapter rows, the CUDA graphs' 0/1 row mask, and the
    merged copy give what the parts give, in both weight layouts, with LoRA and base biases."""
    layers = _peft_linears(conv1d)
    parts = [projection_of(layer, str(i)) for i, layer in enumerate(layers)]
    fused = fuse_projections(parts)
    assert len(fused.deltas) == 1 and fused.deltas[0].a.shape[0] == 2 + 3
    merged = fused.with_merged_adapters()
    x = torch.randn(4, 6)
    with torch.no_grad():
        for split in range(5):
            want = torch.cat([part(x, split) for part in parts], dim=-1)
            torch.testing.assert_close(fused(x, split), want)
            torch.testing.assert_close(merged(x, split), want)
            mask = (torch.arange(4) < split).to(x.dtype).unsqueeze(1)
            torch.testing.assert_close(fused(x, mask), want)
        adapted = torch.cat([layer(x) for layer in layers], dim=-1)  # PEFT's own numbers
        torch.testing.assert_close(fused(x, 4), adapted)


def test_fusing_refuses_parts_that_do_not_fit_and_merged_parts():
    a, b = torch.nn.Linear(6, 5), torch.nn.Linear(7, 5)
    with pytest.raises(ValueError, match="inputs of different sizes"):
        fuse_projections([projection_of(a, "a"), projection_of(b, "b")])
    with pytest.raises(ValueError, match="dtype"):
        fuse_projections([projection_of(a, "a"), projection_of(torch.nn.Linear(6, 5).double(), "c")])
    layers = _peft_linears(False)
    with pytest.raises(ValueError, match="fuse the parts first"):
        fuse_projections([projection_of(layers[0], "0", merge_adapters=True), projection_of(layers[2], "2")])


def test_fuse_projections_auto_fuses_small_models_on_the_cpu(monkeypatch):
    import steer.engine.engine as engine_module

    expert, _ = lora_expert_and_base("llama")
    layer = lambda engine: engine.passes[0][0].layers[0]  # noqa: E731
    assert len(layer(SteerEngine(expert, block_size=4)).qkv) == 1
    assert len(layer(SteerEngine(expert, block_size=4)).gate_up) == 1
    assert len(layer(SteerEngine(expert, block_size=4, fuse_projections=False)).qkv) == 3
    monkeypatch.setattr(engine_module, "FUSE_PROJECTIONS_MAX_BYTES", 1)
    assert len(layer(SteerEngine(expert, block_size=4)).qkv) == 3  # too large to copy
    assert len(layer(SteerEngine(expert, block_size=4, fuse_projections=True)).qkv) == 1
    with pytest.raises(ValueError, match="fuse_projections must be"):
        SteerEngine(expert, block_size=4, fuse_projections="yes")


def test_gamma_zero_needs_no_base():
    expert = tiny_llama(seed=1)
    config = SteerConfig(gamma=0.0, eta=0.5, temperature=0.0, max_new_tokens=NEW)
    results = SteerEngine(expert, config=config, block_size=4).generate(requests())
    assert_is_the_formula(results, expert, expert, 0.0, 0.5)


def test_base_none_without_adapters_is_refused():
    with pytest.raises(ValueError, match="no active LoRA adapter"):
        SteerEngine(tiny_llama(seed=1), config=SteerConfig(gamma=0.5))


def test_a_merged_adapter_is_refused():
    expert, _ = lora_expert_and_base("llama")
    expert.merge_adapter()
    with pytest.raises(ValueError, match="merged into the weights"):
        SteerEngine(expert, config=SteerConfig(gamma=0.5))


def test_dora_is_refused():
    expert, _ = lora_expert_and_base("llama", use_dora=True, target_modules=["q_proj"])
    with pytest.raises(ValueError, match="LoRA variant"):
        runner_for(expert)


def test_lora_on_the_embeddings_is_refused():
    expert, _ = lora_expert_and_base("llama", target_modules=["embed_tokens", "q_proj"])
    with pytest.raises(ValueError, match="embed_tokens"):
        runner_for(expert)


def test_modules_to_save_is_refused():
    expert, _ = lora_expert_and_base("llama", modules_to_save=["lm_head"])
    with pytest.raises(ValueError, match="modules_to_save"):
        runner_for(expert)


def test_device_and_dtype_move_the_models():
    expert, base = lora_expert_and_base("llama")
    expert32 = copy.deepcopy(expert)
    engine = SteerEngine(expert32, config=SteerConfig(temperature=0.0), dtype=torch.float32, device="cpu", block_size=4)
    assert engine.dtype == torch.float32 and engine.runner.attention.cache.k.dtype == torch.float32
    assert next(expert32.parameters()).dtype == torch.float32
