"""Properties of the engine's request checks over random requests: token ids out of the vocabulary,
negative, floats, bools, None and strings; tensors and numpy arrays of random dtypes and shapes;
random max_new_tokens, min_new_tokens, seeds and EOS ids; negative streams of random number and
length around the context limit. Each request either raises a ValueError (nothing else) or
completes with valid tokens; after every one all KV blocks are free again; and a valid request
afterwards gives the tokens it gives on a fresh engine.

The tiny Llama has a vocabulary of 96 tokens and a context of 256 positions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import EOS, VOCAB, expert_and_base

from steer import SteerConfig
from steer.engine.engine import SteerEngine
from steer.engine.pool import NegativePool
from steer.engine.sequence import Request

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

NEW = 3
CONTEXT = 256
KV_MEMORY = 4 * 2**20
ROWS = 8  # streams a step holds: a request of more is refused
CONFIG = SteerConfig(gamma=0.5, eta=0.6, num_negatives=2, temperature=1.0, top_k=10, seed=0, max_new_tokens=NEW)
PLAIN = SteerConfig(gamma=0.0, eta=0.0, temperature=0.0, seed=0, max_new_tokens=NEW)  # the negatives never run
PROMPT, NEGATIVES = [5, 6, 7, 8, 9], [[20, 21, 22], [30, 31]]
PROPERTIES = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def models():
    return expert_and_base("llama")


def make_engine(models, config=CONFIG, **options):
    options = {"block_size": 4, "kv_cache_memory": KV_MEMORY, "max_batch_rows": ROWS} | options
    return SteerEngine(*models, config=config, **options)


def good_request(seed=7):
    return Request(PROMPT, NEGATIVES, NEW, seed=seed, eos_token_id=EOS)


def assert_every_block_is_free(engine):
    assert engine.blocks.num_free_blocks == len(engine.blocks.blocks)


# -- strategies ------------------------------------------------------------------------------------------

token = st.integers(-2, VOCAB + 2)
in_vocabulary = st.integers(0, VOCAB - 1)
odd_item = st.one_of(
    st.floats(allow_nan=True), st.booleans(), st.none(), st.text(max_size=2), st.integers(-(2**70), 2**70),
    st.builds(np.int64, in_vocabulary), st.builds(np.bool_, st.booleans()), st.builds(np.float32, in_vocabulary),
    st.builds(torch.tensor, in_vocabulary),
)
TORCH_DTYPES = [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.int64, torch.float32, torch.float64, torch.bool, torch.complex64]
NUMPY_DTYPES = [np.int64, np.int32, np.uint16, np.uint64, np.int8, np.int64, object, np.float16, np.float64, np.bool_]


@st.composite
def arrays(draw, ids):
    """ids as a tensor or numpy array of a random dtype, in a random shape (0-D, 1-D, 2-D)."""
    shape = draw(st.sampled_from(["1-D", "1-D", "1-D", "0-D", "row", "column"]))
    values = ids[:1] if shape == "0-D" else ids
    if draw(st.booleans()):
        dtype = draw(st.sampled_from(TORCH_DTYPES))
        if dtype in (torch.uint8, torch.int8) and any(not -128 <= v < 256 for v in values):
            dtype = torch.int64
        array = torch.tensor(values, dtype=dtype) if values else torch.tensor([], dtype=dtype)
    else:
        dtype = draw(st.sampled_from(NUMPY_DTYPES))
        if dtype in (np.uint16, np.uint64, np.int8, np.uint8) and any(v < 0 or v > 127 for v in values):
            dtype = np.int64
        array = np.array(values, dtype=dtype)
    if shape == "0-D":
        count = array.numel() if isinstance(array, torch.Tensor) else array.size
        return array.reshape(()) if count == 1 else array
    if shape == "row":
        return array.reshape(1, -1)
    if shape == "column":
        return array.reshape(-1, 1)
    return array


good_ids = st.lists(in_vocabulary, min_size=1, max_size=12)
around_the_limit = st.tuples(st.integers(CONTEXT - NEW - 3, CONTEXT - NEW + 3), in_vocabulary).map(lambda t: [t[1]] * t[0])
INT_TORCH, INT_NUMPY = [torch.int64, torch.int32, torch.int16, torch.uint8], [np.int64, np.int32, np.uint16, np.uint64, object]
ids_in_good_forms = st.one_of(
    good_ids, good_ids.map(tuple), around_the_limit,
    st.tuples(good_ids, st.sampled_from(INT_TORCH)).map(lambda t: torch.tensor(t[0], dtype=t[1])),
    st.tuples(good_ids, st.sampled_from(INT_NUMPY)).map(lambda t: np.array(t[0], dtype=t[1])),
)
ids_in_any_form = st.one_of(
    ids_in_good_forms,
    st.lists(token, max_size=12),
    st.lists(st.one_of(in_vocabulary, odd_item), min_size=1, max_size=4),
    st.lists(token, max_size=12).flatmap(arrays),
    st.one_of(st.none(), st.integers(0, VOCAB), st.text(max_size=3), st.binary(max_size=3), st.just({5: "a"}), st.just({7, 8})),
)
good_streams = st.lists(ids_in_good_forms, min_size=1, max_size=3)
any_streams = st.one_of(
    good_streams,
    st.lists(ids_in_any_form, max_size=3),
    st.lists(st.lists(in_vocabulary, min_size=1, max_size=4), min_size=ROWS - 3, max_size=ROWS + 1),  # near the row limit
    st.lists(in_vocabulary, min_size=2, max_size=6).flatmap(lambda ids: st.sampled_from([torch.tensor([ids, ids]), np.array([ids])])),
    st.one_of(st.none(), st.integers(0, 5), st.just("ab")),
)
odd_number = st.one_of(st.integers(-2, 0), st.booleans(), st.floats(-1, 5), st.none(), st.text(max_size=1))
GOOD = {
    "prompt_ids": ids_in_good_forms,
    "negative_ids": good_streams,
    "max_new_tokens": st.one_of(st.integers(1, NEW + 2), st.builds(np.int64, st.integers(1, NEW))),
    "min_new_tokens": st.integers(0, 1),
    "seed": st.one_of(st.none(), st.integers(0, 2**63 - 1)),
    "eos_token_id": st.one_of(st.none(), st.just(EOS), in_vocabulary, st.builds(np.int32, in_vocabulary)),
}
ANY = {
    "prompt_ids": ids_in_any_form,
    "negative_ids": any_streams,
    "max_new_tokens": st.one_of(GOOD["max_new_tokens"], odd_number),
    "min_new_tokens": st.one_of(st.integers(0, NEW + 3), odd_number),
    "seed": st.one_of(GOOD["seed"], st.integers(-(2**64), -1), st.integers(2**63, 2**64), st.booleans(), st.floats(0, 9)),
    "eos_token_id": st.one_of(GOOD["eos_token_id"], st.integers(VOCAB, VOCAB + 2), st.integers(-2, -1), st.booleans(), st.floats(0, 9)),
}
REQUIRED = ("prompt_ids", "negative_ids", "max_new_tokens")


def request_fields(choices: dict):
    return st.fixed_dictionaries({k: choices[k] for k in REQUIRED}, optional={k: v for k, v in choices.items() if k not in REQUIRED})


good_requests = request_fields(GOOD)
# A good request with one field drawn from anything (often bad), and requests of anything at all.
one_field_changed = st.tuples(good_requests, st.sampled_from(list(ANY))).flatmap(lambda t: ANY[t[1]].map(lambda value: t[0] | {t[1]: value}))
requests = st.one_of(good_requests, one_field_changed, one_field_changed, request_fields(ANY))


def build(fields: dict) -> Request:
    return Request(**fields)


def assert_valid(result, request: Request, engine) -> None:
    assert 1 <= len(result.token_ids) <= request.max_new_tokens
    assert all(type(t) is int and 0 <= t < engine.vocab_size for t in result.token_ids)
    if result.finish_reason == "eos":
        assert result.token_ids[-1] == request.eos_token_id and len(result.token_ids) >= request.min_new_tokens
    else:
        assert result.finish_reason == "length" and len(result.token_ids) == request.max_new_tokens


# -- properties ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [CONFIG, PLAIN], ids=["gamma and eta", "plain"])
def test_random_requests_raise_a_value_error_or_complete_and_leave_every_block_free(models, config):
    engine = make_engine(models, config)
    alone = engine.generate([good_request()])
    fresh_request = Request(list(range(10, 60)), [[40] * 30, [41, 42]], NEW, seed=3)

    @PROPERTIES
    @given(requests, st.booleans())
    def property_(fields, with_a_good_one):
        try:
            request = build(fields)
        except ValueError:
            event("refused by Request")
            return
        batch = [good_request(), request] if with_a_good_one else [request]
        try:
            results = engine.generate(batch)
        except ValueError as error:
            event("refused by the engine")
            assert "\n" not in str(error)
        else:
            event("completed")
            assert len(results) == len(batch)
            for result, one in zip(results, batch):
                assert_valid(result, one, engine)
            if with_a_good_one:
                assert results[0] == alone[0]  # a seeded request's tokens do not depend on its batch
        finally:
            assert_every_block_is_free(engine)

    property_()
    assert_every_block_is_free(engine)
    assert engine.generate([fresh_request]) == make_engine(models, config).generate([fresh_request])
    assert engine.generate([good_request()]) == alone
    assert_every_block_is_free(engine)


pool_examples = st.lists(
    st.one_of(
        st.lists(in_vocabulary, min_size=1, max_size=6),
        st.lists(in_vocabulary, min_size=1, max_size=6),
        st.lists(token, min_size=1, max_size=4),
        st.lists(st.one_of(in_vocabulary, odd_item), min_size=1, max_size=3),
        st.integers(CONTEXT - NEW - 9, CONTEXT - NEW + 2).map(lambda k: [11] * k),  # with the framing, around the limit
    ),
    min_size=1,
    max_size=4,
)


def test_random_runs_raise_a_value_error_or_complete_and_leave_every_block_free(models):
    engine = make_engine(models)
    pool = lambda: NegativePool([[20, 21, 22], [30, 31], [40, 41, 42, 43]], seed=1, separator=[3])
    expected = list(make_engine(models).run(PROMPT, 3, pool(), eos_token_id=EOS))

    @PROPERTIES
    @given(st.one_of(ids_in_good_forms, ids_in_good_forms, ids_in_any_form), st.integers(0, 4), pool_examples, st.sampled_from([(), [1], [3]]),
           st.one_of(st.none(), st.just(EOS), token, st.booleans()), st.one_of(st.integers(0, 1), st.integers(-1, NEW + 1), st.booleans()),
           st.one_of(st.integers(0, 3), st.integers(-1, 3), st.booleans()))
    def property_(prompt_ids, n, examples, framing, eos, min_new, seed_offset):
        try:
            samples = engine.run(prompt_ids, n, NegativePool(examples, seed=2, prefix=framing, separator=framing, suffix=framing),
                                 eos_token_id=eos, min_new_tokens=min_new, seed_offset=seed_offset)
        except ValueError as error:
            event("refused at the call")
            assert "\n" not in str(error)
            assert_every_block_is_free(engine)
            return
        template = Request(prompt_ids, [], NEW, min_new_tokens=min_new, eos_token_id=eos)
        results = []
        try:
            results.extend(samples)  # one sample at a time, as a consumer would
        except ValueError as error:  # a drawn negative context that does not fit, or holds bad ids
            event("refused while running")
            assert "\n" not in str(error)
        else:
            event("completed")
            assert len(results) == n
        for result in results:
            assert_valid(result, template, engine)
            assert 1 <= len(result.negative_example_ids) <= 2 and len(set(result.negative_example_ids)) == len(result.negative_example_ids)
        assert_every_block_is_free(engine)

    property_()
    assert_every_block_is_free(engine)
    assert list(engine.run(PROMPT, 3, pool(), eos_token_id=EOS)) == expected


def test_a_cache_too_small_for_a_request_refuses_it_and_stays_whole(models):
    """Requests that fit one by one, and one that can never fit: a ValueError, and the blocks free."""
    engine = make_engine(models, kv_cache_memory=48 * 2048)  # 48 blocks of 4 tokens (float64 tiny Llama)
    assert len(engine.blocks.blocks) == 48
    big = Request([5] * 40, [[6] * 40, [7] * 40], NEW)  # 4 streams of 43 tokens at their longest: 44 blocks
    huge = Request([5] * 60, [[6] * 60, [7] * 60], NEW)
    with pytest.raises(ValueError, match="KV blocks at its longest"):
        engine.generate([big, huge])
    assert_every_block_is_free(engine)
    assert engine.generate([big, big]) == make_engine(models).generate([big, big])
    assert_every_block_is_free(engine)
