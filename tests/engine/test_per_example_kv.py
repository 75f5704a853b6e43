"""Per-example KV (SteerConfig.per_example_kv, Request.negative_chunks): a joined negative context
assembled from each example's KV, computed alone and copied in with its keys re-rotated, is the
joined context under a block mask (each chunk seeing only itself), as steer.hf.uncached computes it."""

import pytest
import torch
from tiny_models import BOS, EOS, HF_LAYER_ARCHS, expert_and_base, lora_expert_and_base

from steer import SteerConfig
from steer.engine.engine import SteerEngine
from steer.engine.models.rotary import rerotate, unsupported_reason
from steer.engine.pool import NegativePool, example_chunks, frame_examples
from steer.engine.sequence import Request
from steer.hf.uncached import steer_generate_uncached

NEW = 8
PROMPT = [BOS, 5, 6]
SEPARATOR = [EOS, *PROMPT]  # an example's end, then the prompt again: the usual framing
EXAMPLES = [[20 + i, 21 + i, 22 + i, 23 + i][: 2 + i % 3] for i in range(0, 40, 4)]


def joined(chunks, tail):
    return [t for chunk in chunks for t in chunk] + list(tail)


def want_tokens(expert, base, request, gamma, eta):
    negatives = [torch.tensor(n) for n in request.negative_ids]
    return steer_generate_uncached(expert, base, torch.tensor(request.prompt_ids), negatives, gamma=gamma, eta=eta,
                                   max_new_tokens=request.max_new_tokens, eos_token_id=request.eos_token_id,
                                   negative_chunks=request.negative_chunks).tolist()  # fmt: skip


def chunked_request(indices, examples=EXAMPLES, **options):
    chosen = [examples[i] for i in indices]
    stream = frame_examples(chosen, "concat", PROMPT, SEPARATOR, SEPARATOR)[0]
    return Request(PROMPT, [stream], NEW, negative_chunks=[example_chunks(chosen, PROMPT, SEPARATOR, SEPARATOR)], **options)


# The windowed architectures run with WINDOW-key windows, shorter than the contexts: every layer's
# (Mistral, Phi-3) or the sliding layers' beside full ones (Qwen2/3, Gemma 2/3, SmolLM3).
ROTARY_ARCHS = ["llama", "llama3", "qwen2", "mistral", "qwen2_windowed", *HF_LAYER_ARCHS]


@pytest.mark.parametrize("arch", ROTARY_ARCHS)
def test_greedy_tokens_are_the_block_masked_formula(arch):
    expert, base = expert_and_base(arch)
    config = SteerConfig(gamma=0.5, eta=0.6, temperature=0.0, max_new_tokens=NEW)
    engine = SteerEngine(expert, base, config=config, block_size=4, kv_cache_memory=2**20)
    batch = [chunked_request([0, 3, 5]), chunked_request([5, 1]), chunked_request([2]), chunked_request([3, 5, 0])]
    batch.append(Request(PROMPT, batch[0].negative_ids, NEW))  # the same tokens, exact: its own blocks
    results = engine.generate(batch)
    for row, (request, result) in enumerate(zip(batch, results)):
        assert result.token_ids == want_tokens(expert, base, request, 0.5, 0.6), f"row {row}"
    exact = steer_generate_uncached(expert, base, torch.tensor(PROMPT), [torch.tensor(batch[0].negative_ids[0])],
                                    gamma=0.5, eta=0.6, max_new_tokens=NEW).tolist()  # fmt: skip
    assert results[4].token_ids == exact
    assert engine.prefix_cache_stats.cached_tokens["chunk"] > 0  # examples 0, 3 and 5 copied twice, computed once
    # again, in new orders: every chunk cached before the step now (copied for all layers at once)
    again = [chunked_request([5, 0, 3]), chunked_request([1, 2])]
    for request, result in zip(again, engine.generate(again)):
        assert result.token_ids == want_tokens(expert, base, request, 0.5, 0.6)


def test_a_lora_expert_runs_its_chunks_with_its_adapters():
    expert, base = lora_expert_and_base("llama")
    config = SteerConfig(gamma=0.5, eta=0.6, temperature=0.0, max_new_tokens=NEW)
    engine = SteerEngine(expert, None, config=config, block_size=4)
    batch = [chunked_request([0, 3, 5]), chunked_request([1, 3])]
    for request, result in zip(batch, engine.generate(batch)):
        assert result.token_ids == want_tokens(expert, base, request, 0.5, 0.6)


@pytest.mark.parametrize("attention", ["auto", "torch"])
def test_run_draws_assemble_from_cached_examples_in_a_nan_pool_under_preemption(attention):
    """run() with per_example_kv: every sample's tokens are the block-masked formula for the
    examples it drew (the pool grows with earlier samples), in a pool filled with NaN (no step
    reads a slot it has not written: the chunks' and the copies' included) and small enough that
    groups are preempted and cached chunks evicted."""
    expert, base = expert_and_base("llama")
    config = SteerConfig(gamma=0.5, eta=0.6, num_negatives=3, temperature=0.0, max_new_tokens=NEW, seed=3, per_example_kv=True)
    engine = SteerEngine(expert, base, config=config, block_size=4, kv_cache_memory=2**16, max_batch_rows=12,
                         attention_backend=attention)  # fmt: skip
    cache = engine.runner.attention.cache
    cache.k.fill_(float("nan"))
    cache.v.fill_(float("nan"))
    pool = NegativePool([list(e) for e in EXAMPLES], seed=1, prefix=PROMPT, separator=SEPARATOR, suffix=SEPARATOR)
    results = list(engine.run(PROMPT, 14, pool, eos_token_id=EOS))
    assert len(results) == 14
    for result in results:
        request = chunked_request(list(result.negative_example_ids), examples=pool.examples, eos_token_id=EOS)
        assert result.token_ids == want_tokens(expert, base, request, 0.5, 0.6), result.negative_example_ids
    assert engine.prefix_cache_stats.cached_tokens["chunk"] > 0
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks  # every chunk table given back


def test_each_example_is_computed_once_while_it_stays_cached():
    """Draws of 3 from a pool of 4 real examples (and the samples joining it): an example's chunk
    is computed the first time it is drawn and copied from then on."""
    expert, base = expert_and_base("llama")
    config = SteerConfig(num_negatives=3, seed=5, max_new_tokens=4, per_example_kv=True)
    engine = SteerEngine(expert, base, config=config, block_size=4, max_batch_rows=6)
    pool = NegativePool([list(e) for e in EXAMPLES[:4]], seed=2, prefix=PROMPT, separator=SEPARATOR, suffix=SEPARATOR)
    results = list(engine.run(PROMPT, 16, pool, eos_token_id=EOS))
    drawn = [i for r in results for i in r.negative_example_ids]
    first_draws = len(set(drawn))
    stats = engine.prefix_cache_stats
    chunk_tokens = {i: len(PROMPT) + len(pool.examples[i]) + 1 for i in set(drawn)}
    # at most every drawn chunk (fewer where a joined context's cached prefix already holds some)
    assert stats.context_tokens["chunk"] <= sum(chunk_tokens[i] for i in drawn)
    computed = stats.context_tokens["chunk"] - stats.cached_tokens["chunk"]
    assert computed <= sum(chunk_tokens.values())  # each example computed at most once
    assert first_draws < len(drawn) / 2 and stats.hit_rate("chunk") > 0.5, stats


def test_share_negatives_and_per_example_kv_together():
    """K samples of one draw share the joined context's blocks (filed under their own namespace);
    only the first assembles it."""
    expert, base = expert_and_base("llama")
    config = SteerConfig(num_negatives=3, seed=7, max_new_tokens=6, share_negatives=4, per_example_kv=True)
    engine = SteerEngine(expert, base, config=config, block_size=4, max_batch_rows=24)
    pool = NegativePool([list(e) for e in EXAMPLES], seed=1, prefix=PROMPT, separator=SEPARATOR, suffix=SEPARATOR)
    assert len(list(engine.run(PROMPT, 12, pool, eos_token_id=EOS))) == 12
    assert engine.prefix_cache_stats.hit_rate("negative") > 0.5


def test_an_exact_stream_never_finds_an_assembled_one_in_the_prefix_cache():
    """The assembled context differs from the exact one for the same tokens: one after the other,
    each gets its own formula's tokens (the second would be wrong if it found the first's blocks)."""
    expert, base = expert_and_base("llama")
    config = SteerConfig(gamma=0.5, eta=0.6, temperature=0.0, max_new_tokens=NEW)
    engine = SteerEngine(expert, base, config=config, block_size=4)
    chunked = chunked_request([0, 1, 2, 3])
    exact = Request(PROMPT, chunked.negative_ids, NEW)
    for request in (chunked, exact, chunked):
        [result] = engine.generate([request])
        assert result.token_ids == want_tokens(expert, base, request, 0.5, 0.6)
    assert want_tokens(expert, base, chunked, 0.5, 0.6) != want_tokens(expert, base, exact, 0.5, 0.6)


def test_the_chunks_partition_the_joined_context():
    examples = [[7, 8], [9], [10, 11, 12]]
    chunks = example_chunks(examples, PROMPT, SEPARATOR, SEPARATOR)
    assert chunks == [[BOS, 5, 6, 7, 8, EOS], [BOS, 5, 6, 9, EOS], [BOS, 5, 6, 10, 11, 12, EOS]]
    assert joined(chunks, PROMPT) == frame_examples(examples, "concat", PROMPT, SEPARATOR, SEPARATOR)[0]
    other = example_chunks(examples, [1], [3], [4, 4])  # any other framing: the separator leads
    assert other == [[1, 7, 8], [3, 9], [3, 10, 11, 12]]
    assert joined(other, [4, 4]) == frame_examples(examples, "concat", [1], [3], [4, 4])[0]
    pool = NegativePool(examples, prefix=PROMPT, separator=SEPARATOR, suffix=SEPARATOR)
    assert pool.negative_chunks([2, 0]) == [chunks[2], chunks[0]]
    bare = example_chunks(examples, [], [EOS], [EOS])  # no prefix: nothing would follow the last end
    assert bare == [[7, 8, EOS], [9, EOS], [10, 11, 12]]
    stream = frame_examples(examples, "concat", [], [EOS], [EOS])[0]
    assert Request(PROMPT, [stream], negative_chunks=[bare]).negative_chunks == [bare]


@pytest.mark.parametrize("rope", [
    {"rope_type": "default", "rope_theta": 10000.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64, "rope_theta": 500000.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "rope_theta": 10000.0},
    {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
])  # fmt: skip
def test_rerotating_a_key_rotated_at_p_by_o_rotates_it_at_p_plus_o(rope):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=256, rope_parameters=rope)
    rotary = LlamaRotaryEmbedding(config)
    keys = torch.randn(6, 2, 16, dtype=torch.float64)
    positions, offsets = torch.tensor([0, 1, 2, 5, 9, 30]), torch.tensor([3, 3, 7, 0, 40, 100])

    def rotated_at(where):  # as the model rotates a key at ``where`` (its attention factor included)
        cos, sin = rotary(keys, where.unsqueeze(0))  # [1, T, width]
        width = cos.shape[-1]
        part = keys[..., :width].permute(1, 0, 2).unsqueeze(0)  # [1, H, T, width]
        turned, _ = apply_rotary_pos_emb(part, part, cos.double(), sin.double())
        return torch.cat((turned[0].permute(1, 0, 2), keys[..., width:]), dim=-1)

    # rotary computes its angles in float32: 1e-6 at position 130
    torch.testing.assert_close(rerotate(rotated_at(positions), offsets, rotary), rotated_at(positions + offsets), atol=1e-5, rtol=1e-5)
    assert unsupported_reason(rotary) is None


def test_position_dependent_rope_and_learned_positions_are_refused():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    from tiny_models import tiny_gpt2

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=256,
                         rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})  # fmt: skip
    assert "dynamic" in unsupported_reason(LlamaRotaryEmbedding(config))
    with pytest.raises(ValueError, match="per_example_kv: GPT-2's positions are learned"):
        SteerEngine(tiny_gpt2(seed=1), tiny_gpt2(seed=2), config=SteerConfig(per_example_kv=True))
    engine = SteerEngine(tiny_gpt2(seed=1), tiny_gpt2(seed=2), config=SteerConfig())
    with pytest.raises(ValueError, match="negative_chunks: GPT-2"):
        engine.add_request(chunked_request([0, 1]))


def test_bad_chunks_and_settings_are_named():
    stream = frame_examples([[7, 8], [9]], "concat", PROMPT, SEPARATOR, SEPARATOR)[0]
    chunks = example_chunks([[7, 8], [9]], PROMPT, SEPARATOR, SEPARATOR)
    with pytest.raises(ValueError, match=r"negative_chunks\[0\] joined \(14 tokens\) is not a proper prefix"):
        Request(PROMPT, [stream], negative_chunks=[[*chunks, PROMPT]])  # no token left after the chunks
    with pytest.raises(ValueError, match=r"negative_chunks\[0\] joined .* is not a proper prefix"):
        Request(PROMPT, [stream], negative_chunks=[[chunks[1], chunks[0]]])
    with pytest.raises(ValueError, match="negative_chunks has 2 entries but negative_ids has 1"):
        Request(PROMPT, [stream], negative_chunks=[chunks, chunks])
    with pytest.raises(ValueError, match=r"negative_chunks\[0\]\[1\] is empty"):
        Request(PROMPT, [stream], negative_chunks=[[chunks[0], []]])
    with pytest.raises(ValueError, match="per_example_kv applies to negative_mode 'concat'"):
        SteerConfig(per_example_kv=True, negative_mode="separate")
    with pytest.raises(ValueError, match="per_example_kv must be a bool"):
        SteerConfig(per_example_kv="yes")


def test_static_decode_batches_give_the_eager_tokens():
    """The CUDA graphs' padded static batches (their decode steps) beside assembling steps."""
    expert, base = expert_and_base("llama")
    config = SteerConfig(gamma=0.5, eta=0.6, num_negatives=3, temperature=0.0, max_new_tokens=NEW, seed=3, per_example_kv=True)
    outputs = []
    for graphs in ("off", "static"):
        engine = SteerEngine(expert, base, config=config, block_size=4, max_batch_rows=12, decode_graphs=graphs)
        pool = NegativePool([list(e) for e in EXAMPLES], seed=1, prefix=PROMPT, separator=SEPARATOR, suffix=SEPARATOR)
        outputs.append(list(engine.run(PROMPT, 8, pool, eos_token_id=EOS)))
    assert outputs[0] == outputs[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_triton_attention_and_captured_graphs_give_the_eager_tokens_in_a_nan_pool():
    models = [m.to(device="cuda", dtype=torch.float32) for m in expert_and_base("llama")]
    config = SteerConfig(gamma=0.5, eta=0.6, num_negatives=3, temperature=0.0, max_new_tokens=NEW, seed=3, per_example_kv=True)
    outputs = []
    for graphs, fill in (("off", 0.0), ("capture", float("nan"))):
        engine = SteerEngine(*models, config=config, block_size=4, max_batch_rows=12, decode_graphs=graphs)
        assert engine.runner.attention.backend == "triton"
        engine.runner.attention.cache.k.fill_(fill)
        engine.runner.attention.cache.v.fill_(fill)
        pool = NegativePool([list(e) for e in EXAMPLES], seed=1, prefix=PROMPT, separator=SEPARATOR, suffix=SEPARATOR)
        outputs.append(list(engine.run(PROMPT, 8, pool, eos_token_id=EOS)))
        assert engine.prefix_cache_stats.cached_tokens["chunk"] > 0
    assert engine.runner.graph_forwards > 0
    assert outputs[1] == outputs[0]


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def chunked_streams(draw):
    """1-2 negative streams of few distinct tokens (so chunks recur across examples), each cut at
    random points into chunks; sometimes a partition that is not a proper prefix (invalid)."""
    streams, partitions = [], []
    for _ in range(draw(st.integers(1, 2))):
        stream = draw(st.lists(st.integers(10, 13), min_size=2, max_size=24))
        cuts = sorted(set(draw(st.lists(st.integers(1, len(stream)), max_size=4))))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], cuts)]
        if chunks and draw(st.integers(0, 9)) == 0:
            chunks[-1] = [t + 1 for t in chunks[-1]]  # no longer the stream's tokens
        streams.append(stream)
        partitions.append(chunks)
    return streams, partitions


def test_random_chunk_partitions_give_the_block_masked_formula_or_a_value_error():
    """Random streams and random cuts, one engine for every example (its cached chunks and joined
    blocks reused across them, in a small pool): each request is refused with a ValueError or gives
    the block-masked formula's greedy tokens, and every block is free after it."""
    expert, base = expert_and_base("llama")
    config = SteerConfig(gamma=0.5, eta=0.6, temperature=0.0, max_new_tokens=3)
    engine = SteerEngine(expert, base, config=config, block_size=4, kv_cache_memory=2**16, max_batch_rows=8)

    @settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(chunked_streams())
    def property_(case):
        streams, partitions = case
        try:
            request = Request(PROMPT, streams, 3, negative_chunks=partitions)
        except ValueError as error:
            event("refused")
            assert "negative_chunks" in str(error)
            return
        event("chunked" if any(partitions) else "exact")
        [result] = engine.generate([request])
        assert result.token_ids == want_tokens(expert, base, request, 0.5, 0.6)
        assert engine.blocks.num_free_blocks == engine.blocks.num_blocks

    property_()
    assert engine.prefix_cache_stats.cached_tokens.get("chunk", 0) > 0
