"""The engine's two ways of running a decoder, side by side on a Llama (which both can run):

    hand-written   engine/models/llama.py: the forward written out over steer's Projections
    hf_layers      engine/models/hf_layers.py: the model's own transformers layers on a shadow
                   whose linear modules are the same Projections and whose attention is the
                   paged pool (how Qwen3, Gemma, Phi-3, OLMo 2 and SmolLM3 run)

    python -m pytest benchmarks/test_bench_model_paths.py -s

The same 56M-parameter random Llama as benchmarks/test_bench_engine.py (CPU, float32), STEER with
a LoRA expert (one forward per step) and with a separate base, batch 1 and 8, 48-token negatives,
64 new tokens, greedy. Alternating rounds; the ratio is the median of the rounds' own ratios. The
README says which path each family takes; the hand-written one is kept for Llama, Mistral and
Qwen2 only where this shows it faster.
"""

from __future__ import annotations

import statistics

import pytest
import torch
from test_bench_engine import NEW_TOKENS, lora_of, random_llama, workload
from timing import alternating_times, paired_ratio

from steer import Request, SteerConfig, SteerEngine
from steer.engine import models
from steer.engine.models import hf_layers

ROUNDS = {1: 9, 8: 5}


def engine_with(path: str, expert, base, config):
    """A SteerEngine whose Llama runs through ``path`` ("hand-written" or "hf_layers")."""
    if path == "hand-written":
        return SteerEngine(expert, base, config=config, kv_cache_memory=2**27)
    saved = models.FAMILIES["llama"]
    models.FAMILIES["llama"] = hf_layers
    try:
        return SteerEngine(expert, base, config=config, kv_cache_memory=2**27)
    finally:
        models.FAMILIES["llama"] = saved


@pytest.fixture(scope="module")
def llamas():
    if torch.cuda.is_available():
        pytest.skip("a CPU comparison (the GPU check runs the engine benchmarks)")
    base = random_llama(2, "cpu")
    return {"base": base, "lora": lora_of(base), "separate": random_llama(1, "cpu")}


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("kind", ["lora", "separate"])
def test_hand_written_vs_hf_layers(benchmark, llamas, kind, batch):
    expert, base = llamas[kind], (None if kind == "lora" else llamas["base"])
    prompts, negatives = workload(batch, "cpu", 48)
    config = SteerConfig(gamma=0.3, eta=0.3, temperature=0.0, max_new_tokens=NEW_TOKENS)
    requests = [Request(p.tolist(), [n.tolist()], NEW_TOKENS) for p, n in zip(prompts, negatives)]
    engines = {path: engine_with(path, expert, base, config) for path in ("hand-written", "hf_layers")}
    assert type(engines["hf_layers"].passes[0][0]).__name__ == "HFLayersRunner"
    outputs = {path: engine.generate(requests) for path, engine in engines.items()}
    assert outputs["hand-written"] == outputs["hf_layers"], "the two paths disagree on greedy tokens"
    times = alternating_times({path: (lambda e=engine: e.generate(requests)) for path, engine in engines.items()},
                              ROUNDS[batch])  # fmt: skip
    ratio = paired_ratio(times, "hf_layers", "hand-written")
    speeds = {path: batch * NEW_TOKENS / statistics.median(values) for path, values in times.items()}
    benchmark.extra_info.update({**{f"{p}_tok_s": s for p, s in speeds.items()}, "hf_layers_time_over_hand_written": ratio})
    benchmark.pedantic(lambda: None, rounds=1)
    print(f"\n[cpu] {kind} expert, batch {batch}: hand-written {speeds['hand-written']:.1f} tok/s, "
          f"hf_layers {speeds['hf_layers']:.1f} tok/s: hf_layers time / hand-written {ratio:.2f}")  # fmt: skip
