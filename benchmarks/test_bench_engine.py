"""STEER engine vs plain ``generate`` vs the drop-in processor vs the paper's uncached loop.

    python -m pytest benchmarks/test_bench_engine.py -s                 # every scenario
    python -m pytest benchmarks/test_bench_engine.py -s -k "lora and 1"  # one

A random Llama (no downloads): about 56M parameters in float32 on the CPU, about 1.1B in bfloat16
on a GPU (those tests skip without one); 64 new tokens per sample (EOS off), a 24-token prompt and one negative example of 48 or 120 tokens per sample (the paper's
"concat" mode), greedy. Two kinds of expert:

  lora      the expert is the base + a rank-16 LoRA on every linear of every layer (PEFT); the
            engine gets it alone (``SteerEngine(expert)``) and runs expert and base rows in one
            forward. Plain decoding is timed both with the PEFT model as it is and with the
            adapter merged into a copy (the fastest single-model decoding there is).
  separate  the expert and the base are two models of the same architecture.

``engine_single_model`` is the engine decoding the expert alone (gamma = eta = 0): the engine's
time over it is what STEER's extra rows cost. Each test times every contender side by side in one
run (this machine is shared and noisy: only the ratios mean anything) and prints tokens/s and the
ratios the engine is about. The paper's loop
(``steer_generate_uncached``: full uncached forwards of expert and base each step, one sample at
a time) is timed once per scenario; it is slow by design.
"""

from __future__ import annotations

import copy
import time

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList

from steer import Request, SteerConfig, SteerEngine, SteerLogitsProcessor
from steer.hf.uncached import steer_generate_uncached
import statistics

from timing import alternating_times, median_seconds, paired_ratio

NEW_TOKENS = 64
PROMPT_TOKENS = 24
NEGATIVE_LENGTHS = (48, 120)  # tokens of each sample's one negative example
GAMMA, ETA = 0.3, 0.3
VOCAB = 32000
ENGINE_ROUNDS = {1: 15, 8: 5}  # alternating rounds of engine vs engine single-model, by batch


SIZES = {
    # About 56M parameters: 8 layers of width 512, untied head.
    "cpu": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4),
    # About 1.1B parameters (TinyLlama's shape).
    "cuda": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4),
}
DTYPES = {"cpu": torch.float32, "cuda": torch.bfloat16}


def random_llama(seed: int, device: str) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, bos_token_id=1, eos_token_id=None, pad_token_id=0, tie_word_embeddings=False, **SIZES[device]
    )
    return LlamaForCausalLM(config).to(device=device, dtype=DTYPES[device]).eval()


def lora_of(base: LlamaForCausalLM):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=16, lora_alpha=16, init_lora_weights=False, target_modules=targets)
    return get_peft_model(copy.deepcopy(base), config).eval()


@pytest.fixture(scope="module", params=["cpu", "cuda"])
def models(request) -> dict:
    device = request.param
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    base = random_llama(2, device)
    lora = lora_of(base)
    merged = copy.deepcopy(lora).merge_and_unload().eval()
    return {"device": device, "base": base, "separate": random_llama(1, device), "lora": lora, "lora_merged": merged}


def synchronized(fn):
    """fn, then wait for the GPU (if any) to finish its work."""
    def run():
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return run


def workload(batch: int, device: str, negative_tokens: int):
    gen = torch.Generator().manual_seed(batch)
    prompts = torch.randint(3, VOCAB, (batch, PROMPT_TOKENS), generator=gen)
    negatives = [torch.randint(3, VOCAB, (negative_tokens,), generator=gen) for _ in range(batch)]
    return prompts.to(device), [n.to(device) for n in negatives]


@pytest.mark.parametrize("negative_tokens", NEGATIVE_LENGTHS)
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("kind", ["lora", "separate"])
def test_engine_vs_plain_vs_dropin_vs_paper(benchmark, models, kind, batch, negative_tokens):
    expert, base = models[kind], models["base"]
    device = models["device"]
    prompts, negatives = workload(batch, device, negative_tokens)
    config = SteerConfig(gamma=GAMMA, eta=ETA, temperature=0.0, max_new_tokens=NEW_TOKENS)
    generate_args = dict(
        input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0,
    )
    requests = [Request(p.tolist(), [n.tolist()], NEW_TOKENS) for p, n in zip(prompts, negatives)]

    def plain(model=expert):
        model.generate(**generate_args)

    def engine():
        # A fresh engine each round: no prefix cached from the previous round.
        SteerEngine(expert, None if kind == "lora" else base, config=config, kv_cache_memory=2**27).generate(requests)

    def engine_single_model():
        # The same engine decoding the expert alone (gamma = eta = 0): what STEER's extra rows cost.
        alone = SteerConfig(gamma=0.0, eta=0.0, num_negatives=0, temperature=0.0, max_new_tokens=NEW_TOKENS)
        plain_requests = [Request(p.tolist(), [], NEW_TOKENS) for p in prompts]
        SteerEngine(expert, config=alone, kv_cache_memory=2**27).generate(plain_requests)

    def dropin():
        processor = SteerLogitsProcessor(expert, base, list(negatives), gamma=GAMMA, eta=ETA)
        expert.generate(**generate_args, logits_processor=LogitsProcessorList([processor]))

    def paper():
        for row in range(batch):
            steer_generate_uncached(expert, base, prompts[row], [negatives[row]], gamma=GAMMA, eta=ETA,
                                    max_new_tokens=NEW_TOKENS)

    seconds = {"plain": median_seconds(synchronized(plain), rounds=3)}
    if kind == "lora":
        seconds["plain_merged"] = median_seconds(synchronized(lambda: plain(models["lora_merged"])), rounds=3)
    seconds["dropin"] = median_seconds(synchronized(dropin), rounds=1)
    start = time.perf_counter()
    synchronized(paper)()
    seconds["paper"] = time.perf_counter() - start
    # The ratio this benchmark is about, STEER over the engine's own single-model decoding, from
    # rounds that alternate the two (more of them at batch 1, where a round is short); the ratio
    # is the median of the rounds' own ratios.
    rounds = ENGINE_ROUNDS[batch]
    times = alternating_times({"engine_single_model": synchronized(engine_single_model), "engine": synchronized(engine)}, rounds)
    seconds.update({name: statistics.median(values) for name, values in times.items()})
    benchmark.pedantic(engine, rounds=1, warmup_rounds=0)

    tokens = batch * NEW_TOKENS
    report = {f"{name}_tok_s": tokens / s for name, s in seconds.items()}
    report["engine_time_over_plain"] = seconds["engine"] / seconds["plain"]
    if kind == "lora":
        report["engine_time_over_plain_merged"] = seconds["engine"] / seconds["plain_merged"]
    report["engine_time_over_engine_single_model"] = paired_ratio(times, "engine", "engine_single_model")
    report["engine_speedup_over_dropin"] = seconds["dropin"] / seconds["engine"]
    report["engine_speedup_over_paper"] = seconds["paper"] / seconds["engine"]
    benchmark.extra_info.update(report)
    speeds = ", ".join(f"{name} {tokens / s:.1f}" for name, s in seconds.items())
    ratios = ", ".join(f"{name} {value:.2f}" for name, value in report.items() if not name.endswith("_tok_s"))
    device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"\n[{device_name}] {kind} expert, batch {batch}, {negative_tokens}-token negatives, {NEW_TOKENS} new tokens: "
          f"tok/s: {speeds}\n  ratios: {ratios}")
