"""Decode speed of the drop-in vs plain ``generate`` vs the paper's uncached loop, side by side.

    python -m pytest benchmarks/test_bench_dropin.py -s

Random Llama (no downloads) on the CPU. Prints tokens/s of each and the ratios the drop-in is
about: how close STEER gets to plain decoding, and how much faster than recomputing everything.
"""


import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList

from steer import SteerLogitsProcessor
from steer.hf.uncached import steer_generate_uncached
from timing import median_seconds

NEW_TOKENS = 32
PROMPT_TOKENS = 24
NEGATIVE_TOKENS = 48


def random_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=8000, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=4, bos_token_id=1, eos_token_id=None, pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def models():
    return random_llama(1), random_llama(2)


@pytest.mark.parametrize("batch", [1, 8])
def test_dropin_vs_plain_vs_uncached(benchmark, models, batch):
    expert, base = models
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 8000, (batch, PROMPT_TOKENS), generator=gen)
    negatives = [torch.randint(3, 8000, (NEGATIVE_TOKENS,), generator=gen) for _ in range(batch)]
    common = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=NEW_TOKENS,
                  min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)

    def plain():
        expert.generate(**common)

    def dropin():
        processor = SteerLogitsProcessor(expert, base, negatives, gamma=0.2, eta=0.2)
        expert.generate(**common, logits_processor=LogitsProcessorList([processor]))

    def uncached():  # the paper's loop, one sample at a time
        for row in range(batch):
            steer_generate_uncached(expert, base, input_ids[row], [negatives[row]], gamma=0.2, eta=0.2,
                                    max_new_tokens=NEW_TOKENS)

    plain_s = median_seconds(plain)
    uncached_s = median_seconds(uncached, rounds=1)
    benchmark.pedantic(dropin, rounds=3, warmup_rounds=1)
    dropin_s = benchmark.stats.stats.median
    tokens = batch * NEW_TOKENS
    ratios = {
        "plain_tok_s": tokens / plain_s,
        "dropin_tok_s": tokens / dropin_s,
        "uncached_tok_s": tokens / uncached_s,
        "dropin_time_over_plain": dropin_s / plain_s,
        "dropin_speedup_over_uncached": uncached_s / dropin_s,
    }
    benchmark.extra_info.update(ratios)
    print(f"\nbatch {batch}: plain {ratios['plain_tok_s']:.0f} tok/s, drop-in {ratios['dropin_tok_s']:.0f} tok/s, "
          f"uncached {ratios['uncached_tok_s']:.0f} tok/s; drop-in time / plain = {ratios['dropin_time_over_plain']:.2f}, "
          f"drop-in speed-up over uncached = {ratios['dropin_speedup_over_uncached']:.1f}x")
