"""Bad requests are refused up front, naming the field, and no exit path leaks KV blocks.

The tiny models have a vocabulary of 96 tokens and a context of 256 positions.
"""

import numpy as np
import pytest
import torch
from tiny_models import VOCAB, expert_and_base

from steer import SteerConfig
from steer.engine.engine import SteerEngine
from steer.engine.pool import NegativePool
from steer.engine.sequence import Request

NEW = 10
CONTEXT = 256
POOL_MEMORY = 4 * 2**20
PROMPT, NEGATIVES = [5, 6, 7, 8, 9, 10, 11, 12, 13], [[20, 21, 22, 23, 24], [30, 31]]
CONFIG = SteerConfig(gamma=0.5, eta=0.6, num_negatives=2, temperature=0.0, seed=0, max_new_tokens=NEW)


@pytest.fixture(scope="module")
def models():
    return expert_and_base("llama")


def make_engine(models, **options):
    options = dict(config=CONFIG, block_size=4, kv_cache_memory=POOL_MEMORY) | options
    return SteerEngine(*models, **options)


def make_pool():
    return NegativePool([[20, 21, 22], [30, 31], [40, 41, 42, 43]], seed=1, separator=[3])


def good_request():
    return Request(PROMPT, NEGATIVES, NEW)


def assert_every_block_is_free(engine):
    assert engine.blocks.num_free_blocks == len(engine.blocks.blocks)


def in_generate(*args, **kwargs):
    """A bad request second in a generate() batch, built inside the call under test."""
    return lambda engine: engine.generate([good_request(), Request(*args, **kwargs)])


def in_run(prompt_ids, **kwargs):
    """A bad run(), not iterated: it must refuse at the call, before any sample starts."""
    return lambda engine: engine.run(prompt_ids, 3, make_pool(), **kwargs)


BAD_REQUESTS = {
    "id equal to the vocabulary size": (
        in_generate([5, VOCAB, 7], NEGATIVES, NEW),
        r"requests\[1\]\.prompt_ids\[1\] = 96 is not a token id of this model's vocabulary \[0, 96\)",
    ),
    "id over the vocabulary in a negative": (
        in_generate(PROMPT, [[20], [21, 200]], NEW),
        r"requests\[1\]\.negative_ids\[1\]\[1\] = 200 is not a token id of this model's vocabulary",
    ),
    "negative id": (in_generate([5, -1], NEGATIVES, NEW), r"prompt_ids\[1\] = -1 is negative"),
    "float ids": (in_generate([5.0, 6.0], NEGATIVES, NEW), r"prompt_ids\[0\] = 5\.0 \(float\) is not an int token id"),
    "float tensor": (in_generate(torch.tensor([5.0, 6.0]), NEGATIVES, NEW), r"prompt_ids\[0\] = 5\.0 \(float\)"),
    "2-D tensor": (in_generate(torch.tensor([[5, 6]]), NEGATIVES, NEW), r"prompt_ids must be 1-D, got shape \(1, 2\)"),
    "2-D negative stream": (
        in_generate(PROMPT, [np.array([[20, 21]])], NEW), r"negative_ids\[0\] must be 1-D, got shape \(1, 2\)",
    ),
    "bool id": (in_generate([True, 5], NEGATIVES, NEW), r"prompt_ids\[0\] = True \(bool\) is not an int token id"),
    "bool tensor": (in_generate(torch.tensor([True, False]), NEGATIVES, NEW), r"prompt_ids\[0\] = True \(bool\)"),
    "one negative stream given as ids": (
        in_generate(PROMPT, [20, 21], NEW), r"negative_ids\[0\] = 20 is not a token-id list or 1-D tensor",
    ),
    "eos out of the vocabulary": (
        in_generate(PROMPT, NEGATIVES, NEW, eos_token_id=VOCAB),
        r"requests\[1\]\.eos_token_id = 96 is not a token id of this model's vocabulary \[0, 96\)",
    ),
    "negative eos": (in_generate(PROMPT, NEGATIVES, NEW, eos_token_id=-1), r"eos_token_id must be None or an int >= 0"),
    "bool min_new_tokens": (in_generate(PROMPT, NEGATIVES, NEW, min_new_tokens=True), r"min_new_tokens must be an int"),
    "bool seed": (in_generate(PROMPT, NEGATIVES, NEW, seed=True), r"seed must be None or an int"),
    "prompt longer than the context": (
        in_generate([5] * (CONTEXT + 1), NEGATIVES, NEW),
        r"requests\[1\]\.prompt_ids: 257 tokens \+ max_new_tokens 10 = 267 positions, "
        r"11 over the model's context length of 256",
    ),
    "negative stream and max_new_tokens over the context": (
        in_generate(PROMPT, [[20], [21] * (CONTEXT - 6)], NEW),
        r"requests\[1\]\.negative_ids\[1\]: 250 tokens \+ max_new_tokens 10 = 260 positions, 4 over",
    ),
    "empty run() prompt": (in_run([]), r"prompt_ids is empty"),
    "run() prompt out of the vocabulary": (in_run([5, VOCAB]), r"^prompt_ids\[1\] = 96 is not a token id"),
    "run() prompt longer than the context": (in_run([5] * CONTEXT), r"^prompt_ids: 256 tokens \+ max_new_tokens 10"),
    "run() eos out of the vocabulary": (in_run(PROMPT, eos_token_id=VOCAB), r"^eos_token_id = 96 is not a token id"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_a_bad_request_is_refused_naming_the_field(models, case):
    engine = make_engine(models)
    call, message = BAD_REQUESTS[case]
    with pytest.raises(ValueError, match=message):
        call(engine)
    assert_every_block_is_free(engine)


@pytest.mark.parametrize(
    "as_ids",
    [torch.tensor, lambda ids: torch.tensor(ids, dtype=torch.int32), np.array, lambda ids: np.array(ids, dtype=np.uint16), tuple],
    ids=["int64 tensor", "int32 tensor", "numpy", "numpy uint16", "tuple"],
)
def test_tensors_and_arrays_of_ids_give_what_lists_give(models, as_ids):
    engine = make_engine(models)
    want = engine.generate([Request(PROMPT, NEGATIVES, NEW, eos_token_id=2)])
    request = Request(as_ids(PROMPT), [as_ids(n) for n in NEGATIVES], NEW, eos_token_id=np.int64(2))
    assert request.prompt_ids == PROMPT and all(type(t) is int for t in request.prompt_ids)
    assert request.negative_ids == NEGATIVES and type(request.eos_token_id) is int
    assert engine.generate([request]) == want
    ran = list(engine.run(as_ids(PROMPT), 2, make_pool()))
    assert ran == list(engine.run(PROMPT, 2, make_pool()))


def test_the_context_length_comes_from_the_model_config():
    from transformers import GPT2Config, LlamaConfig, MistralConfig

    from steer.engine.engine import context_length

    assert context_length(LlamaConfig(max_position_embeddings=300)) == 300
    assert context_length(MistralConfig(max_position_embeddings=4096, sliding_window=512)) == 4096
    assert context_length(GPT2Config(n_positions=128)) == 128
    assert context_length(type("NoLimit", (), {})()) is None
    assert make_engine(expert_and_base("gpt2")).max_context_length == CONTEXT


def invalid_request(index: int) -> Request:
    kinds = [
        lambda: Request([5, 6, VOCAB + index], NEGATIVES, NEW),
        lambda: Request(PROMPT, [[20, 21], [30, VOCAB]], NEW),
        lambda: Request(PROMPT, NEGATIVES, NEW, eos_token_id=VOCAB + index),
        lambda: Request([7] * (CONTEXT - NEW + 1), NEGATIVES, NEW),
        lambda: Request(PROMPT, [[20], [21] * CONTEXT], NEW),
    ]
    return kinds[index % len(kinds)]()


def test_a_hundred_invalid_requests_leave_the_pool_whole(models):
    engine = make_engine(models)
    for index in range(100):
        with pytest.raises(ValueError, match=r"requests\[1\]\."):
            engine.generate([good_request(), invalid_request(index)])
    assert_every_block_is_free(engine)
    [result] = engine.generate([good_request()])
    assert result.finish_reason == "length" and len(result.token_ids) == NEW
    assert [result] == make_engine(models).generate([good_request()])
    assert_every_block_is_free(engine)


def test_run_generators_closed_early_give_their_blocks_back(models):
    engine = make_engine(models)
    for _ in range(50):
        samples = engine.run(PROMPT, 6, make_pool())
        first = next(samples)
        assert len(first.token_ids) == NEW
        samples.close()
        assert_every_block_is_free(engine)
        assert engine.blocks.cached_prefix_tokens("expert", PROMPT) == 8  # written KV stays a cached prefix
    results = list(engine.run(PROMPT, 6, make_pool()))
    assert results == list(make_engine(models).run(PROMPT, 6, make_pool()))
    assert_every_block_is_free(engine)


class ScriptedPool(NegativePool):
    """Draws the given pool indices in order, so a test knows which sample gets which negatives."""

    def __init__(self, examples, draws):
        super().__init__(examples)
        self.draws = iter(draws)

    def draw(self, count):
        return next(self.draws)


def test_a_drawn_negative_over_the_context_stops_run_naming_it_and_frees_the_running_samples(models):
    engine = make_engine(models)
    pool = ScriptedPool([[20, 21, 22], [30, 31], [40] * (CONTEXT - NEW)], draws=[[0, 1], [1, 0], [0, 2]])
    samples = engine.run(PROMPT, 5, pool)
    with pytest.raises(ValueError, match=r"sample 2's negative_ids\[0\] \(pool examples \[0, 2\]\): 249 tokens \+ max_new_tokens 10 = 259 positions, 3 over"):
        list(samples)
    assert_every_block_is_free(engine)
    assert engine.generate([good_request()]) == make_engine(models).generate([good_request()])


def failing_forward(engine, monkeypatch, error, on_call):
    """Make the ``on_call``-th forward of the engine's runners (expert and base) raise ``error``."""
    calls = []

    def failing(forward):
        def forward_that_fails(*args, **kwargs):
            calls.append(forward)
            if len(calls) == on_call:
                raise error
            return forward(*args, **kwargs)

        return forward_that_fails

    for runner, _ in engine.passes:
        monkeypatch.setattr(runner, "last_hidden", failing(runner.last_hidden))
    return monkeypatch.undo


def first_and_second():
    """Two requests of 4 streams each. With 4 rows a step, the second one is prefilled alone in
    step 2, after the first finished in step 1: the 3rd forward (step 2's expert pass) is the one
    that would write its prompt's KV."""
    return [Request([50, 51, 52, 53, 54], [[60, 61], [62]], 1), good_request()]


@pytest.mark.parametrize("error", [RuntimeError("forward failed"), KeyboardInterrupt()], ids=["RuntimeError", "KeyboardInterrupt"])
def test_an_error_inside_a_forward_frees_every_block_and_poisons_no_prefix(models, monkeypatch, error):
    engine = make_engine(models, max_batch_rows=4)
    restore = failing_forward(engine, monkeypatch, error, on_call=3)
    with pytest.raises(type(error)):
        engine.generate(first_and_second())
    restore()
    assert_every_block_is_free(engine)
    # The second request's prompt blocks were promised to the prefix cache but never written.
    fresh = make_engine(models, max_batch_rows=4)
    assert engine.generate([good_request()]) == fresh.generate([good_request()])
    assert engine.generate(first_and_second()) == fresh.generate(first_and_second())
    assert_every_block_is_free(engine)


@pytest.mark.parametrize("error", [RuntimeError("forward failed"), KeyboardInterrupt()], ids=["RuntimeError", "KeyboardInterrupt"])
def test_an_error_inside_a_forward_of_run_frees_every_block(models, monkeypatch, error):
    engine = make_engine(models)
    restore = failing_forward(engine, monkeypatch, error, on_call=3)
    with pytest.raises(type(error)):
        list(engine.run(PROMPT, 6, make_pool()))
    restore()
    assert_every_block_is_free(engine)
    assert list(engine.run(PROMPT, 6, make_pool())) == list(make_engine(models).run(PROMPT, 6, make_pool()))
