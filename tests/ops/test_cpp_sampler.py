"""The C++ CPU sampler (csrc/cpu/sample.cpp) where the generic tests of test_sample.py do not reach:
its thread / chunk splits, the exact tie rules of its candidate buffers and nucleus histograms,
native float16 / bfloat16 loads, strides, many streams, and its two noise paths agreeing."""

import math

import pytest
import torch

import steer
from steer import reference, steer_weights
from steer.ops import cpp_backend

pytestmark = pytest.mark.skipif(not cpp_backend.is_available(), reason="steer._C is not built")


def random_logits(shape, dtype=torch.float32, seed=0, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * scale).to(dtype)


def keys_for(batch, seed=5, step=3):
    return torch.full((batch,), seed), torch.arange(batch) * 11 + 2, torch.full((batch,), step)


def assert_same_draws(logits, weights, **sampler):
    """cpp tokens == reference tokens exactly; log-probabilities to float32 rounding."""
    seeds, keys, steps = keys_for(logits.shape[0])
    want_tokens, want_logprobs = reference.sample(logits, weights, seeds=seeds, row_keys=keys, steps=steps, **sampler)
    tokens, logprobs = steer.sample(
        logits, weights, seed=seeds, row_keys=keys, step=steps, return_logprobs=True, backend="cpp", **sampler
    )
    assert torch.equal(tokens, want_tokens), (tokens, want_tokens)
    torch.testing.assert_close(logprobs, want_logprobs, rtol=1e-4, atol=1e-4)
    return tokens, logprobs


@pytest.fixture
def threads():
    """Set torch's (and so the kernel's) thread count for one test, restoring it after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


SAMPLERS = [
    {"temperature": 0.0},
    {"temperature": 1.0},
    {"temperature": 0.8, "top_k": 10},
    {"temperature": 1.3, "top_p": 0.9},
    {"temperature": 1.0, "top_k": 200, "top_p": 0.7},
]


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_every_split_across_threads_draws_the_reference_tokens(threads, batch):
    """Few rows and many threads split each row into vocabulary chunks (up to 6 here); merging
    them must not show, in the tokens or in their log-probabilities."""
    logits = random_logits((batch, 3, 50257), seed=batch)
    weights = steer_weights(0.3, 0.3, 1)
    seeds, keys, steps = keys_for(batch)
    for sampler in SAMPLERS:
        want = reference.sample(logits, weights, seeds=seeds, row_keys=keys, steps=steps, **sampler)
        for num_threads in (1, 2, 3, 7, 16):
            threads(num_threads)
            tokens, logprobs = steer.sample(
                logits, weights, seed=seeds, row_keys=keys, step=steps, return_logprobs=True, backend="cpp", **sampler
            )
            assert torch.equal(tokens, want[0]), (num_threads, sampler)
            torch.testing.assert_close(logprobs, want[1], rtol=1e-4, atol=1e-4)


def test_greedy_ties_go_to_the_lowest_id_across_chunks(threads):
    threads(4)
    logits = torch.zeros(2, 2, 100_000)
    logits[0, 0, [70_000, 30_000, 99_999]] = 5.0  # tied maxima in different chunks
    assert steer.sample(logits, [1.0, -0.5], temperature=0, backend="cpp").tolist() == [30_000, 0]


def tied_row(vocab, top, tied, tied_value=1.0):
    """A [1, 1, vocab] row: `top` distinct values above `tied` tokens sharing tied_value, then lower."""
    row = torch.full((vocab,), -5.0)
    row[:top] = torch.linspace(5.0, 2.0, top)
    gen = torch.Generator().manual_seed(vocab + tied)
    row[torch.randperm(vocab - top, generator=gen)[:tied] + top] = tied_value
    return row.view(1, 1, vocab)


@pytest.mark.parametrize("top_k", [1, 3, 10])
@pytest.mark.parametrize("tied", [1, 5, 3000])
def test_top_k_keeps_every_tie_with_the_kth_value(top_k, tied):
    """Ties at the boundary are all kept, as in the reference, even when they overflow the
    candidate buffer (3000 ties with k = 3: the buffer has to grow)."""
    logits = tied_row(20_000, top=top_k - 1, tied=tied)
    kept = reference.probabilities(logits, [1.0], top_k=top_k) > 0
    assert int(kept.sum()) == top_k - 1 + tied
    for seed in range(20):
        tokens, logprobs = steer.sample(logits, [1.0], top_k=top_k, seed=seed, return_logprobs=True, backend="cpp")
        assert kept[0, tokens[0]]
        want = reference.sample(
            logits, [1.0], top_k=top_k, seeds=torch.tensor([seed]), row_keys=torch.tensor([0]), steps=torch.tensor([0])
        )
        assert torch.equal(tokens, want[0])
        torch.testing.assert_close(logprobs, want[1], rtol=1e-4, atol=1e-4)


def test_top_k_on_a_flat_vocabulary_keeps_everything():
    logits = torch.zeros(1, 2, 32768)  # (the reference draws noise for every token: keep V modest)
    tokens, logprobs = steer.sample(logits, [1.2, -0.2], top_k=10, seed=3, return_logprobs=True, backend="cpp")
    torch.testing.assert_close(logprobs, torch.full((1,), -math.log(32768)))
    assert_same_draws(logits, [1.2, -0.2], top_k=10)


@pytest.mark.parametrize(
    "spread, top_p",
    [
        (0.0, 0.5),  # a flat row: every token tied, all kept
        (1e-6, 0.5),  # nearly flat: the first histogram puts everything in one bucket, split again
        (1e-3, 0.9),
        (0.05, 0.3),
        (3.0, 0.999),
    ],
)
def test_top_p_alone_on_flat_and_nearly_flat_rows(spread, top_p):
    """Top-p without top-k walks histograms of the row, never a sort of it: rows whose crossing
    bucket holds most of the vocabulary must still give the reference's nucleus."""
    logits = random_logits((1, 2, 16384), scale=spread, seed=1)  # 32x the sort limit of a bucket
    tokens, logprobs = assert_same_draws(logits, [1.0, 0.0], top_p=top_p)
    if spread == 0.0:
        torch.testing.assert_close(logprobs, torch.full((1,), -math.log(16384)))


def test_top_p_two_level_row_keeps_the_whole_tied_level():
    """100 tokens at 3.0 hold 17% of the mass, 9900 at 0.0 the rest. With top_p = 0.15 the walk
    stops inside the upper level, whose ties are all kept; with 0.2 it reaches the first token of
    the lower level, so that whole level is tied with the smallest kept token and kept too."""
    logits = torch.zeros(2, 1, 10_000)
    logits[:, 0, :100] = 3.0
    for top_p, kept in ((0.15, 100), (0.2, 10_000), (0.9, 10_000)):
        assert int((reference.probabilities(logits, [1.0], top_p=top_p)[0] > 0).sum()) == kept
        tokens, logprobs = assert_same_draws(logits, [1.0], top_p=top_p)
        want = torch.where(tokens < 100, 3.0, 0.0) - math.log(100 * math.exp(3.0) + (kept - 100))
        torch.testing.assert_close(logprobs, want.float())


def test_tiny_top_p_and_top_k_one_are_greedy():
    logits = random_logits((4, 3, 30_000))
    weights = steer_weights(0.2, 0.2, 1)
    greedy = reference.greedy(logits, weights)
    for sampler in ({"top_p": 1e-6}, {"top_k": 1}, {"top_k": 1, "top_p": 0.5}):
        tokens, logprobs = steer.sample(logits, weights, seed=9, return_logprobs=True, backend="cpp", **sampler)
        assert torch.equal(tokens, greedy)
        assert torch.equal(logprobs, torch.zeros(4))


def test_large_vocabulary_top_k_10():
    logits = random_logits((6, 7, 128256), scale=3.0)
    weights = steer_weights(0.2, 0.2, 5)
    for temperature in (0.7, 1.0):
        assert_same_draws(logits, weights, temperature=temperature, top_k=10)
    assert_same_draws(logits, weights, temperature=1.0, top_k=10, top_p=0.8, vocab_size=128000)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_read_natively_and_exactly(dtype):
    """Half inputs give the reference's draws on the same values upcast to float32."""
    logits = random_logits((3, 4, 8000), dtype=dtype)
    logits[0, 0, 7] = -math.inf
    logits[1, 2, :50] = -math.inf
    weights = steer_weights(0.3, 0.4, 2)
    for sampler in SAMPLERS + [{"temperature": 1.0, "plausibility_alpha": 0.05, "top_p": 0.95}]:
        seeds, keys, steps = keys_for(3)
        got = steer.sample(logits, weights, seed=seeds, row_keys=keys, step=steps, backend="cpp", **sampler)
        upcast = steer.sample(logits.float(), weights, seed=seeds, row_keys=keys, step=steps, backend="cpp", **sampler)
        want = reference.sample(logits.float(), weights, seeds=seeds, row_keys=keys, steps=steps, **sampler)[0]
        assert torch.equal(got, upcast) and torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_half_bit_pattern_converts_exactly(dtype):
    """All 65536 bit patterns: finite ones load as their exact float32 value (subnormals and
    -0 included), -inf is forbidden, NaN and +inf are reported."""
    patterns = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(dtype)
    values = patterns.float()
    finite = torch.isfinite(values)
    row = patterns[finite | torch.isneginf(values)].view(1, 1, -1)
    got = steer.combine(row, [1.0], normalize=False, backend="cpp")
    want = row.float().view(1, -1)
    assert torch.equal(got.view(-1).view(torch.int32)[torch.isfinite(want.view(-1))],
                       want.view(-1).view(torch.int32)[torch.isfinite(want.view(-1))])  # fmt: skip
    assert torch.equal(torch.isneginf(got), torch.isneginf(want))
    for bad, message in ((values[torch.isnan(values)][:1], "NaN"), (torch.tensor([math.inf]), r"\+inf")):
        broken = row.clone()
        broken[0, 0, 1000] = bad.to(dtype)
        with pytest.raises(ValueError, match=message):
            steer.sample(broken, [1.0], backend="cpp")


def test_strided_logits():
    storage = random_logits((4, 6000, 5), seed=2)
    weights = torch.tensor([steer_weights(0.3, 0.4, 3).tolist()] * 4)
    layouts = {
        "stride_v = K": storage.permute(0, 2, 1),
        "every other stream and token": random_logits((4, 10, 12000), seed=3)[:, ::2, ::2],
        "expanded batch (stride_b = 0)": random_logits((1, 5, 6000), seed=4).expand(4, 5, 6000),
        "offset slice": random_logits((6, 5, 6100), seed=5)[1:5, :, 100:],
    }
    for name, logits in layouts.items():
        assert not logits.is_contiguous(), name
        for sampler in SAMPLERS:
            assert_same_draws(logits, weights, **sampler)


@pytest.mark.parametrize("streams", [1, 2, 5, 9, 16])
def test_many_streams_with_per_row_weights_and_minus_inf(streams):
    logits = random_logits((3, streams, 3000), seed=streams)
    gen = torch.Generator().manual_seed(streams)
    weights = -torch.rand(3, streams, generator=gen) * 0.3
    weights[:, 0] = 1.0 + torch.rand(3, generator=gen)
    if streams > 3:
        weights[1, 3] = 0.0
        logits[1, 3, :10] = -math.inf  # a weight-0 stream's -inf contributes nothing
    logits[0, 0, 11] = -math.inf  # forbidden by the expert
    logits[2, streams - 1, :100] = -math.inf  # floored in a negatively weighted stream (or the expert if K = 1)
    for sampler in SAMPLERS + [{"temperature": 1.0, "plausibility_alpha": 0.1}]:
        assert_same_draws(logits, weights, **sampler)


def test_noise_inside_the_pass_equals_noise_on_candidates():
    """Without filters the race runs inside the pass (noise for whole tiles); with top_k = V - 1
    and one forbidden token the same tokens are candidates and draw their noise afterwards. The
    two paths must draw the same token for every seed."""
    logits = random_logits((3, 2, 5000), scale=0.3)
    logits[:, 0, 1234] = -math.inf
    weights = [1.1, -0.1]
    for seed in range(30):
        plain = steer.sample(logits, weights, seed=seed, backend="cpp")
        candidates = steer.sample(logits, weights, seed=seed, top_k=4999, backend="cpp")
        assert torch.equal(plain, candidates)


def test_extreme_temperatures():
    logits = random_logits((4, 3, 8000))
    weights = steer_weights(0.2, 0.2, 1)
    assert_same_draws(logits, weights, temperature=1e-3, top_k=50)
    assert_same_draws(logits, weights, temperature=50.0, top_p=0.5)
    assert_same_draws(logits, weights, temperature=1e-3)


def test_errors_follow_combine():
    logits = random_logits((3, 3, 100))
    logits[2, 0, 5] = math.inf
    logits[1, 2, 9] = math.nan
    logits[0, 1, 99] = math.nan  # padding: never read
    with pytest.raises(ValueError, match=r"NaN \(batch row 1, stream 2\)"):
        steer.sample(logits, steer_weights(0.2, 0.2, 1), vocab_size=99, top_k=5, backend="cpp")
    empty = random_logits((2, 2, 50))
    empty[1, 0] = -math.inf
    with pytest.raises(ValueError, match="batch row 1 has no token"):
        steer.sample(empty, [1.0, -0.5], top_p=0.5, backend="cpp")


def test_the_binding_rejects_bad_sampling_parameters():
    logits, weights = torch.zeros(2, 1, 10), torch.ones(2, 1)
    keys = torch.zeros(2, dtype=torch.int64)
    common = dict(seeds=keys, row_keys=keys, steps=keys, vocab_size=10, plausibility_alpha=0.0)
    for bad in ({"temperature": -1.0, "top_k": 0, "top_p": 1.0}, {"temperature": 1.0, "top_k": 0, "top_p": 0.0}):
        with pytest.raises(ValueError, match="invalid"):
            cpp_backend.sample(logits, weights, **bad, **common)
    with pytest.raises(ValueError, match="invalid"):
        cpp_backend.sample(logits, torch.full((2, 1), math.nan), temperature=1.0, top_k=0, top_p=1.0, **common)
