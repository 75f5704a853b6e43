"""SteerEngine end to end against the uncached, one-sample-at-a-time formula."""

import pytest
import torch
from tiny_models import EOS, HF_LAYER_ARCHS, PAD, expert_and_base, left_padded

from steer import SteerConfig
from steer.engine.engine import SteerEngine
from steer.engine.sequence import Request
from steer.hf.uncached import steer_generate_uncached

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [3, 4, 5, 6, 7, 8, 12, 13, 14], [40]]
NEGATIVES = [[[20, 21, 22, 23]], [[30, 31], [40, 41, 42, 43], [44]], [[50]], [[60, 61], [62]]]
NEW = 10


def requests(eos=EOS):
    return [Request(p, n, NEW, eos_token_id=eos) for p, n in zip(PROMPTS, NEGATIVES)]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "llama3", "qwen2", "mistral", "qwen2_windowed", *HF_LAYER_ARCHS])
@pytest.mark.parametrize("gamma, eta", [(0.5, 0.6), (0.0, 0.8), (0.7, 0.0)])
def test_greedy_engine_is_the_formula_for_a_mixed_batch(arch, gamma, eta):
    expert, base = expert_and_base(arch)
    config = SteerConfig(gamma=gamma, eta=eta, temperature=0.0, max_new_tokens=NEW)
    engine = SteerEngine(expert, base, config=config, block_size=4, kv_cache_memory=2**22)
    results = engine.generate(requests())
    for row, result in enumerate(results):
        negatives = [torch.tensor(n) for n in NEGATIVES[row]]
        want = steer_generate_uncached(
            expert, base, torch.tensor(PROMPTS[row]), negatives, gamma=gamma, eta=eta, max_new_tokens=NEW, eos_token_id=EOS
        )
        assert result.token_ids == want.tolist(), f"row {row}"
        assert result.finish_reason == ("eos" if want[-1] == EOS else "length")


@pytest.mark.parametrize("arch, attention, graphs", [("llama", "auto", "off"), ("gpt2", "torch", "off"),
                                                     ("gemma2", "auto", "off"), ("llama", "auto", "static")])  # fmt: skip
def test_no_step_reads_a_kv_slot_it_has_not_written(arch, attention, graphs):
    """The pool is not zeroed when it is made: filled with NaN, it must give the formula's tokens,
    with prefix hits (repeated prompts and negatives), blocks freed and handed out again (a small
    budget) and the CUDA graphs' padded static batches (their scratch block)."""
    expert, base = expert_and_base(arch)
    config = SteerConfig(gamma=0.5, eta=0.6, temperature=0.0, max_new_tokens=NEW)
    engine = SteerEngine(expert, base, config=config, block_size=4, kv_cache_memory=2**17,
                         attention_backend=attention, decode_graphs=graphs, max_batch_rows=12)  # fmt: skip
    cache = engine.runner.attention.cache
    cache.k.fill_(float("nan"))
    cache.v.fill_(float("nan"))
    for row, result in enumerate(engine.generate(requests(eos=None) * 2)):
        row %= len(PROMPTS)
        negatives = [torch.tensor(n) for n in NEGATIVES[row]]
        want = steer_generate_uncached(expert, base, torch.tensor(PROMPTS[row]), negatives, gamma=0.5, eta=0.6, max_new_tokens=NEW)
        assert result.token_ids == want.tolist(), f"row {row}"


EXEMPT_EOS = 24  # a token these random models' negatives make a difference to, in greedy decoding


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen3"])
def test_eos_exempt_is_the_formula_without_the_negatives_at_eos(arch):
    """A mixed batch (1 and 3 negative streams, one request with eta 0): EOS scored by the
    contrast alone in the rows with negatives, exactly as the uncached formula with eos_exempt."""
    expert, base = expert_and_base(arch)
    config = SteerConfig(gamma=0.5, eta=0.8, temperature=0.0, max_new_tokens=NEW, eos_exempt=True)
    engine = SteerEngine(expert, base, config=config, block_size=4, kv_cache_memory=2**22)
    batch = requests(EXEMPT_EOS) + [Request(PROMPTS[0], [], NEW, eos_token_id=EXEMPT_EOS, eta=0.0)]
    differs = 0
    for row, result in enumerate(engine.generate(batch)):
        eta = 0.8 if row < len(PROMPTS) else 0.0
        negatives = [torch.tensor(n) for n in NEGATIVES[row]] if eta else []
        want, plain = (steer_generate_uncached(expert, base, torch.tensor(batch[row].prompt_ids), negatives, gamma=0.5, eta=eta,
                                               max_new_tokens=NEW, eos_token_id=EXEMPT_EOS, eos_exempt=exempt)
                       for exempt in (True, False))  # fmt: skip
        assert result.token_ids == want.tolist(), f"row {row}"
        differs += want.tolist() != plain.tolist()
    if arch == "llama":
        assert differs >= 2, "the exemption changed nothing here: the test would not see it missing"


def test_eos_exempt_needs_the_eos_token():
    expert, base = expert_and_base("llama")
    engine = SteerEngine(expert, base, config=SteerConfig(eos_exempt=True), block_size=4)
    with pytest.raises(ValueError, match="eos_token_id is None, but eos_exempt needs the EOS token"):
        engine.add_request(Request(PROMPTS[0], NEGATIVES[0], NEW))
    engine.add_request(Request(PROMPTS[0], [], NEW, eta=0.0))  # no negatives: nothing to exempt


def test_gamma_eta_zero_is_plain_greedy_decoding():
    expert, base = expert_and_base("llama")
    engine = SteerEngine(expert, base, config=SteerConfig(gamma=0.0, eta=0.0, num_negatives=0, temperature=0.0), block_size=4)
    results = engine.generate([Request(p, [], NEW) for p in PROMPTS])
    ids, mask = left_padded(PROMPTS)
    plain = expert.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD, eos_token_id=None)
    for row, result in enumerate(results):
        assert result.token_ids == plain[row, ids.shape[1] :].tolist()


def test_every_request_completes_with_a_tiny_kv_budget():
    expert, base = expert_and_base("gpt2")
    config = SteerConfig(temperature=0.0)
    roomy = SteerEngine(expert, base, config=config, block_size=4).generate(requests(eos=None) * 2)
    per_block = 2 * 2 * 4 * 4 * 8 * 8  # k and v, layers, block size, heads, head dim, float64
    tight = SteerEngine(expert, base, config=config, block_size=4, kv_cache_memory=30 * per_block, max_batch_rows=16)
    assert tight.blocks.num_free_blocks == 30
    assert [r.token_ids for r in tight.generate(requests(eos=None) * 2)] == [r.token_ids for r in roomy]


def test_a_request_that_can_never_fit_is_refused():
    expert, base = expert_and_base("gpt2")
    per_block = 2 * 2 * 4 * 4 * 8 * 8
    engine = SteerEngine(expert, base, block_size=4, kv_cache_memory=5 * per_block)
    with pytest.raises(ValueError, match="KV blocks at its longest"):
        engine.generate(requests())


def test_sampling_is_reproducible_and_independent_of_the_batch():
    expert, base = expert_and_base("llama")
    config = SteerConfig(top_k=10, seed=123, max_new_tokens=NEW)
    batch = SteerEngine(expert, base, config=config, block_size=4).generate(requests())
    again = SteerEngine(expert, base, config=config, block_size=4).generate(requests())
    assert batch == again
    seeded = [Request(p, n, NEW, seed=1000 + i) for i, (p, n) in enumerate(zip(PROMPTS, NEGATIVES))]
    engine = SteerEngine(expert, base, config=config, block_size=4)
    together = engine.generate(seeded)
    alone = engine.generate([seeded[2], seeded[0]])
    assert alone == [together[2], together[0]]


def test_share_negatives_gives_a_group_of_samples_one_draw_and_one_prefill():
    from steer.engine.pool import NegativePool

    expert, base = expert_and_base("llama")
    examples = [[20 + i, 21 + i, 22 + i, 23 + i, 24 + i, 25 + i] for i in range(0, 60, 6)]
    rates = {}
    for share in (1, 4):
        config = SteerConfig(num_negatives=3, seed=7, max_new_tokens=6, share_negatives=share)
        engine = SteerEngine(expert, base, config=config, block_size=4, max_batch_rows=24)
        results = list(engine.run([5, 6, 7], 12, NegativePool(examples, seed=1, separator=[3])))
        by_group = {}
        for result in results:
            by_group.setdefault((result.seed - 7) // share, set()).add(result.negative_example_ids)
        assert len(by_group) == 12 // share and all(len(draws) == 1 for draws in by_group.values())
        rates[share] = engine.prefix_cache_stats.hit_rate("negative")
    assert rates[4] > 0.5 > rates[1], rates  # 3 of 4 samples find the group's negative context cached


def test_run_keeps_the_batch_full_and_grows_the_pool():
    from steer.engine.pool import NegativePool

    expert, base = expert_and_base("gpt2")
    config = SteerConfig(num_negatives=2, seed=7, max_new_tokens=6)
    engine = SteerEngine(expert, base, config=config, block_size=4, max_batch_rows=9)  # 3 groups of 3 streams
    pool = NegativePool([[20, 21, 22], [30, 31], [40, 41, 42, 43]], seed=1, separator=[3])
    results = list(engine.run([5, 6, 7], 7, pool))
    assert len(results) == 7 and len(pool) == 3 + 7
    for result in results:
        assert len(result.negative_example_ids) == 2
        assert all(0 <= i < len(pool) for i in result.negative_example_ids)
        assert 1 <= len(result.token_ids) <= 6
    assert any(max(r.negative_example_ids) >= 3 for r in results), "no sample drew an earlier synthetic one"
    again = list(SteerEngine(expert, base, config=config, block_size=4, max_batch_rows=9).run(
        [5, 6, 7], 7, NegativePool([[20, 21, 22], [30, 31], [40, 41, 42, 43]], seed=1, separator=[3])))
    assert again == results
    shifted = list(SteerEngine(expert, base, config=config, block_size=4, max_batch_rows=9).run(
        [5, 6, 7], 2, NegativePool([[20, 21, 22], [30, 31], [40, 41, 42, 43]], seed=1, separator=[3]), seed_offset=5))
    assert [r.seed for r in shifted] == [7 + 5, 7 + 6]


def test_a_token_budget_changes_the_schedule_not_the_tokens():
    expert, base = expert_and_base("llama")
    config = SteerConfig(temperature=0.0)
    free = SteerEngine(expert, base, config=config, block_size=4).generate(requests())
    budgeted = SteerEngine(expert, base, config=config, block_size=4, max_batch_tokens=12).generate(requests())
    assert budgeted == free
    with pytest.raises(ValueError, match="max_batch_tokens"):
        SteerEngine(expert, base, config=config, max_batch_tokens=0)
