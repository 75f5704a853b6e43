"""steer.sample: exact greedy, statistical agreement with the reference distribution, seeds."""

import math

import pytest
import torch

import steer
from backend_devices import GPU_BACKENDS, device_for, run
from steer import reference, steer_weights
from steer.ops import triton_backend

BACKENDS = steer.backends("sample")
DRAWS = 40_000


def random_logits(shape, dtype=torch.float32, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * scale).to(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 3, 17), (4, 7, 1001), (2, 9, 50257), (2, 3, 128256)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_is_exactly_the_reference_argmax(backend, shape, dtype):
    logits = random_logits(shape, dtype)
    weights = steer_weights(0.3, 0.4, shape[1] - 2) if shape[1] >= 2 else [1.0]
    got = run(steer.sample, logits, weights, temperature=0, top_k=10, backend=backend)
    assert got.dtype == torch.long
    assert torch.equal(got, reference.greedy(logits, weights))


def draw_frequencies(backend, logits, weights, **sampler):
    batch = logits.expand(DRAWS, *logits.shape[1:])
    tokens = run(steer.sample, batch, weights, seed=1234, backend=backend, **sampler)
    return torch.bincount(tokens, minlength=logits.shape[-1]).double() / DRAWS


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "sampler",
    [
        {"temperature": 1.0},
        {"temperature": 0.7, "top_k": 5},
        {"temperature": 1.5, "top_p": 0.8},
        {"temperature": 1.0, "top_k": 10, "top_p": 0.9},
    ],
    ids=str,
)
def test_draws_follow_the_reference_distribution(backend, sampler):
    logits = random_logits((1, 4, 31), scale=1.5)
    logits[0, 0, 3] = -math.inf  # a token the expert forbids
    weights = steer_weights(0.3, 0.4, 2)
    want = reference.probabilities(logits, weights, **sampler)[0]
    got = draw_frequencies(backend, logits, weights, **sampler)
    assert got[want == 0].sum() == 0, "drew a token of probability zero"
    bound = 5 * torch.sqrt(want * (1 - want) / DRAWS) + 1e-3
    assert ((got - want).abs() <= bound).all(), (got - want).abs().max()
    assert torch.nn.functional.cosine_similarity(got, want, dim=0) > 0.999


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_and_padded_tokens_are_never_drawn(backend):
    logits = random_logits((1, 3, 40), scale=0.1)
    logits[0, 0, ::2] = -math.inf  # the expert forbids every even token
    logits[0, :, 32:] = 50.0  # padded LM-head rows, hugely likely if they were considered
    frequencies = draw_frequencies(backend, logits, steer_weights(0.5, 0.5, 1), vocab_size=32)
    assert frequencies[::2].sum() == 0 and frequencies[32:].sum() == 0
    assert (frequencies[1:32:2] > 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_near_one_hot_always_picks_the_peak(backend):
    logits = random_logits((6, 3, 500))
    peaks = torch.tensor([0, 499, 17, 250, 3, 42])
    logits[torch.arange(6), 0, peaks] += 80.0
    for seed in range(5):
        tokens = run(steer.sample, logits, steer_weights(0.2, 0.2, 1), seed=seed, backend=backend)
        assert torch.equal(tokens, peaks)


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_tokens(backend):
    logits, weights = random_logits((16, 3, 1000), scale=0.5), steer_weights(0.2, 0.2, 1)
    first = run(steer.sample, logits, weights, seed=7, top_p=0.95, backend=backend)
    assert torch.equal(first, run(steer.sample, logits, weights, seed=7, top_p=0.95, backend=backend))
    assert not torch.equal(first, run(steer.sample, logits, weights, seed=8, top_p=0.95, backend=backend))
    from_generator = [
        run(steer.sample, logits, weights, generator=torch.Generator().manual_seed(3), top_p=0.95, backend=backend)
        for _ in range(2)
    ]
    assert torch.equal(*from_generator)
    torch.manual_seed(5)
    global_first = run(steer.sample, logits, weights, top_p=0.95, backend=backend)
    torch.manual_seed(5)
    assert torch.equal(global_first, run(steer.sample, logits, weights, top_p=0.95, backend=backend))


SAMPLERS = [
    {"temperature": 1.0},
    {"temperature": 0.7, "top_k": 10},
    {"temperature": 1.2, "top_p": 0.9},
    {"temperature": 1.0, "top_k": 50, "top_p": 0.8, "plausibility_alpha": 0.01},
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sampler", SAMPLERS, ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 3, 97), (8, 7, 4099), (2, 4, 50257)], ids=str)
def test_tokens_are_exactly_the_reference_draws(backend, sampler, shape):
    """Same Philox noise, same filters: the same token, not just the same distribution."""
    logits = random_logits(shape, scale=2.0)
    weights = steer_weights(0.3, 0.4, shape[1] - 2) if shape[1] >= 2 else [1.0]
    seeds, keys, steps = torch.full((shape[0],), 99), torch.arange(shape[0]) * 7 + 1, torch.full((shape[0],), 4)
    want_tokens, want_logprobs = reference.sample(logits, weights, seeds=seeds, row_keys=keys, steps=steps, **sampler)
    tokens, logprobs = run(steer.sample, 
        logits, weights, seed=seeds, row_keys=keys, step=4, return_logprobs=True, backend=backend, **sampler
    )
    assert torch.equal(tokens, want_tokens)
    torch.testing.assert_close(logprobs, want_logprobs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_rows_tokens_do_not_depend_on_the_rest_of_the_batch(backend):
    logits, weights = random_logits((12, 3, 500), scale=0.5), steer_weights(0.2, 0.2, 1)
    keys = torch.arange(100, 112)
    full = run(steer.sample, logits, weights, seed=1, row_keys=keys, step=3, top_k=20, backend=backend)
    subset = torch.tensor([7, 2, 11])
    alone = run(steer.sample, logits[subset], weights, seed=1, row_keys=keys[subset], step=3, top_k=20, backend=backend)
    assert torch.equal(full[subset], alone)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_row_seeds_and_steps(backend):
    logits, weights = random_logits((4, 3, 2000), scale=0.2), steer_weights(0.2, 0.2, 1)
    base = run(steer.sample, logits, weights, seed=torch.tensor([1, 2, 3, 4]), step=0, backend=backend)
    same_first = run(steer.sample, logits, weights, seed=torch.tensor([1, 9, 9, 9]), step=0, backend=backend)
    assert base[0] == same_first[0]
    later = run(steer.sample, logits, weights, seed=torch.tensor([1, 2, 3, 4]), step=torch.tensor([0, 0, 0, 1]), backend=backend)
    assert torch.equal(base[:3], later[:3])
    assert not torch.equal(base, run(steer.sample, logits, weights, seed=torch.tensor([1, 2, 3, 4]), step=1, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_logprobs_are_those_of_the_sampled_distribution(backend, temperature):
    logits, weights = random_logits((8, 3, 64)), steer_weights(0.2, 0.2, 1)
    tokens, logprobs = run(steer.sample, 
        logits, weights, temperature=temperature, top_k=10, seed=3, return_logprobs=True, backend=backend
    )
    probs = reference.probabilities(logits, weights, temperature=temperature or 1.0, top_k=10)
    want = probs.gather(1, tokens.unsqueeze(1)).squeeze(1).log().float()
    torch.testing.assert_close(logprobs, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": 1e-45}, "use 0 for greedy decoding"),  # divided by it, the float32 scores overflow
        ({"temperature": 1e308}, "temperature must be <= 10000"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"seed": 1, "generator": torch.Generator()}, "either seed or generator"),
        ({"seed": -1}, "seed"),
        ({"seed": torch.tensor([1.5])}, "integer tensor"),
        ({"seed": torch.tensor([1, 2])}, "shape \\[B\\]"),
        ({"step": 2**32}, "step"),
        ({"row_keys": torch.zeros(3, dtype=torch.long)}, "row_keys"),
    ],
)
def test_bad_sampler_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        steer.sample(torch.zeros(1, 1, 4), [1.0], **kwargs)


def test_nan_raises_instead_of_sampling():
    logits = torch.zeros(2, 2, 9)
    logits[0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        steer.sample(logits, [1.2, -0.2])


def test_empty_batch():
    tokens, logprobs = steer.sample(torch.zeros(0, 1, 4), [1.0], return_logprobs=True)
    assert tokens.shape == (0,) and logprobs.shape == (0,)


# ---- sample_deferred + read_tokens: the engine's one read-back per step ----------------------


# The Triton backend too where its interpreter runs it on the CPU (never picked by "auto" there).
DEFERRING = BACKENDS + [b for b in ("triton",) if b not in BACKENDS and triton_backend.is_interpreted()]


@pytest.mark.parametrize("backend", DEFERRING)
def test_deferred_tokens_are_those_of_sample(backend):
    from steer.ops import read_tokens, sample_deferred

    device = device_for(backend)
    logits = random_logits((3, 4, 50), seed=5).to(device)
    weights = steer_weights(0.3, 0.4, 2)
    options = dict(temperature=0.8, top_k=7, seed=11, backend=backend)
    want, want_logprobs = steer.sample(logits, weights, return_logprobs=True, **options)
    drawn = sample_deferred(logits, weights, **options)
    assert torch.equal(drawn.logprobs.cpu(), want_logprobs.cpu())
    assert read_tokens(drawn.tokens, [drawn.errors]) == want.tolist()
    if backend in GPU_BACKENDS:  # a device kernel: errors recorded, read with the tokens
        assert drawn.errors is not None and drawn.errors.buffer.device == logits.device
    else:  # checked on the host already
        assert drawn.errors is None


@pytest.mark.parametrize("backend", DEFERRING)
@pytest.mark.parametrize("bad, message", [(math.nan, "NaN \\(batch row 7, stream 1\\)"),
                                          (math.inf, "\\+inf \\(batch row 7, stream 1\\)")], ids=["nan", "inf"])
def test_deferred_errors_name_the_callers_row(backend, bad, message):
    """A sub-batch's rows stand for the caller's rows 2 and 7: the error names row 7, raised by
    read_tokens for a device kernel (nothing was read back before), at once on the host."""
    from steer.ops import read_tokens, sample_deferred

    logits = torch.zeros(2, 2, 9, device=device_for(backend))
    logits[1, 1, 4] = bad
    with pytest.raises(ValueError, match=message):
        drawn = sample_deferred(logits, [1.2, -0.2], backend=backend, rows=[2, 7])
        assert backend in GPU_BACKENDS, "a host backend raises in sample_deferred"
        read_tokens(drawn.tokens, [drawn.errors])


@pytest.mark.parametrize("backend", [b for b in DEFERRING if b in GPU_BACKENDS])
def test_read_tokens_raises_the_first_recorded_error_of_several(backend):
    from steer.ops import read_tokens, sample_deferred

    device = device_for(backend)
    clean = sample_deferred(torch.zeros(1, 1, 5, device=device), [1.0], backend=backend, rows=[0])
    empty = torch.full((1, 1, 5), -math.inf, device=device)  # no finite token in row 3
    bad = sample_deferred(empty, [1.0], backend=backend, rows=[3])
    tokens = torch.cat([clean.tokens, bad.tokens])
    with pytest.raises(ValueError, match="batch row 3 has no token"):
        read_tokens(tokens, [clean.errors, None, bad.errors])
    assert read_tokens(clean.tokens, [clean.errors, None]) == [clean.tokens.item()]
