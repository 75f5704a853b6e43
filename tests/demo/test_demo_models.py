"""The demo models bundled in python/steer/demo/models/: present, small, offline, usable."""

import json

import pytest
import torch

from steer.demo import models as demo

peft = pytest.importorskip("peft")

JOKE = "There are 10 types of people: those who understand binary and those who don't."


@pytest.fixture(scope="module")
def loaded():
    return demo.load_demo_expert()


def test_bundled_files_exist_and_are_small():
    base, expert = demo.demo_base_dir(), demo.demo_expert_dir()
    tokenizer_files = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
    for name in ["config.json", "model.safetensors", "generation_config.json", *tokenizer_files]:
        assert (base / name).is_file(), name
    for name in ["adapter_config.json", "adapter_model.safetensors", *tokenizer_files]:
        assert (expert / name).is_file(), name
    assert (demo.MODELS_DIR / "SOURCES.md").is_file()
    size = sum(p.stat().st_size for p in demo.MODELS_DIR.rglob("*") if p.is_file())
    assert size < 8_000_000, size


def test_adapter_config_is_plain_lora():
    config = json.loads((demo.demo_expert_dir() / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert not config.get("use_dora") and not config.get("modules_to_save")
    assert config["base_model_name_or_path"] == "steer-demo-base"


def test_loads_offline_and_tokenizer_round_trips(loaded):
    tokenizer, expert = loaded
    assert isinstance(expert, peft.PeftModel) and not expert.training
    ids = tokenizer.encode(JOKE)
    assert tokenizer.decode(ids) == JOKE
    assert tokenizer.bos_token_id not in ids and tokenizer.eos_token_id not in ids  # no special tokens added
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert expert.get_base_model().config.vocab_size == len(tokenizer)


def test_lora_on_every_linear_projection(loaded):
    _, expert = loaded
    targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    wrapped = {name.rsplit(".", 1)[-1] for name, module in expert.named_modules() if hasattr(module, "lora_A")}
    assert wrapped == targets
    layers = expert.get_base_model().config.num_hidden_layers
    lora_layers = [m for m in expert.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert len(lora_layers) == len(targets) * layers
    assert not any(getattr(m, "merged", False) for m in lora_layers)


def test_greedy_generate_runs_and_adapter_matters(loaded):
    tokenizer, expert = loaded
    prompt = torch.tensor([[tokenizer.bos_token_id]])
    kwargs = dict(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=20,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        out = expert.generate(**kwargs)
        with expert.disable_adapter():
            base_logits = expert(input_ids=prompt).logits
        expert_logits = expert(input_ids=prompt).logits
    assert out.shape[0] == 1 and 1 < out.shape[1] <= 21
    assert isinstance(tokenizer.decode(out[0, 1:], skip_special_tokens=True), str)
    assert not torch.allclose(base_logits, expert_logits)


def test_real_examples_are_the_pyjokes_jokes():
    pytest.importorskip("pyjokes")
    jokes = demo.demo_real_examples()
    assert len(jokes) > 200 and all(isinstance(j, str) and j for j in jokes)


def test_real_examples_without_pyjokes(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pyjokes", None)  # import raises ImportError
    with pytest.raises(RuntimeError, match="pip install pyjokes"):
        demo.demo_real_examples()


def test_steer_does_not_start_texts_with_fragments(loaded):
    """STEER's first token, from the shipped models: the contrast with the base must not lift
    mid-sentence tokens (",", "ar", " all") into the top 10. A joint jokes+fortunes tokenizer did
    (15% of samples began with a fragment); SOURCES.md tells the story."""
    import random

    from steer import reference, steer_weights

    tokenizer, expert = loaded
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    jokes = demo.demo_real_examples() if _has_pyjokes() else [JOKE] * 5
    context = [bos]
    for joke in random.Random(0).sample(jokes, 5):
        context += tokenizer.encode(joke) + [eos, bos]
    with torch.no_grad():
        expert_logits = expert(input_ids=torch.tensor([[bos]])).logits[0, -1]
        negative_logits = expert(input_ids=torch.tensor([context])).logits[0, -1]
        with expert.disable_adapter():
            base_logits = expert(input_ids=torch.tensor([[bos]])).logits[0, -1]
    logits = torch.stack([expert_logits, base_logits, negative_logits])[None]
    probs = reference.probabilities(logits, steer_weights(0.2, 0.2, 1), top_k=10)[0]  # what the sampler draws from
    drawn = probs.nonzero().flatten()
    starts = [(tokenizer.decode([int(i)]), round(float(probs[i]), 3)) for i in drawn]
    fragment_mass = sum(p for s, p in starts if not (s[:1].isupper() or s[:1] in "\"'0123456789"))
    assert fragment_mass < 0.02, starts


def _has_pyjokes() -> bool:
    try:
        import pyjokes  # noqa: F401
    except ImportError:
        return False
    return True
