"""The Triton kernels (steer_kernels) against steer.reference.

Without a GPU they run under Triton's interpreter on small shapes, with tiny tiles and chunks so
that every row is split across several programs and every path of the second stage (candidates,
tie spill-over, top-p shortfall, exact search) runs. The full-size tests (V = 50257 and 128256,
B up to 64) and the CUDA-graph test need a GPU and skip cleanly without one.
"""

import os

import torch

if not torch.cuda.is_available():  # before steer_kernels is imported (tests/conftest.py does it too)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

import steer  # noqa: E402
from steer import reference, steer_weights  # noqa: E402
from steer.ops import triton_backend  # noqa: E402

triton = pytest.importorskip("triton")
import steer_kernels  # noqa: E402
from steer_kernels import philox, streams  # noqa: E402

sample_kernels = importlib.import_module("steer_kernels.sample")  # the module (steer_kernels.sample is the op)

GPU = torch.cuda.is_available()
INTERPRETED = not isinstance(sample_kernels._sample_pass_kernel, triton.runtime.jit.JITFunction)
DEVICE = "cuda" if GPU else "cpu"
if not GPU and not INTERPRETED:
    pytest.skip(
        "no GPU, and steer_kernels was imported before TRITON_INTERPRET=1 was set: run with tests/conftest.py",
        allow_module_level=True,
    )

needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU (full-size Triton tests)")
INF = math.inf

# Small tiles and chunks: V = 257 is split into 5 chunks of 2 tiles, each its own program.
SMALL = {"block": 32, "chunk": 64}
# ... and candidate lists short enough that the second stage's exact search is reachable.
SMALL_SAMPLE = {**SMALL, "topp_candidates": 16, "topp_prefix": 64, "insert_limit": 4}


def random_logits(shape, dtype=torch.float32, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * scale).to(dtype)


def random_weights(batch, streams_, seed=0, per_row=False):
    gen = torch.Generator().manual_seed(seed + 1)
    weights = -torch.rand((batch, streams_) if per_row else (streams_,), generator=gen) * 0.5
    weights[..., 0] = 1.0 + torch.rand(weights[..., 0].shape, generator=gen)
    return weights


def kernel_weights(weights, batch):
    weights = torch.as_tensor(weights, dtype=torch.float32)
    return (weights.expand(batch, -1) if weights.dim() == 1 else weights).to(DEVICE)


def assert_combine_matches(got, logits, weights, **kwargs):
    want = reference.combine(logits.cpu(), torch.as_tensor(weights).cpu(), **kwargs)
    got = got.cpu()
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.equal(torch.isneginf(got), torch.isneginf(want))
    finite = torch.isfinite(want)
    scale = float(want[finite].abs().max().clamp(min=1.0)) if finite.any() else 1.0
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=scale * 2e-6 + 1e-5)


def kernel_sample(logits, weights, *, seeds, row_keys, steps, paths=None, knobs=SMALL_SAMPLE, **sampler):
    """steer_kernels.sample on DEVICE with the test's tiling; returns (tokens, logprobs) on the CPU."""
    batch = logits.shape[0]
    tokens, logprobs = steer_kernels.sample(
        logits.to(DEVICE), kernel_weights(weights, batch), seeds=seeds.to(DEVICE), row_keys=row_keys.to(DEVICE),
        steps=steps.to(DEVICE), paths=paths, **knobs, **sampler,
    )
    return tokens.cpu(), logprobs.cpu()


def row_keys_for(batch, seed=99, step=4):
    return torch.full((batch,), seed), torch.arange(batch) * 7 + 1, torch.full((batch,), step)


def assert_sample_matches(logits, weights, knobs=SMALL_SAMPLE, expect_path=None, **sampler):
    batch = logits.shape[0]
    seeds, keys, steps = row_keys_for(batch)
    paths = torch.full((batch,), -1, dtype=torch.int32, device=DEVICE)
    tokens, logprobs = kernel_sample(logits, weights, seeds=seeds, row_keys=keys, steps=steps, paths=paths,
                                     knobs=knobs, **sampler)
    want_tokens, want_logprobs = reference.sample(logits.cpu(), torch.as_tensor(weights), seeds=seeds, row_keys=keys,
                                                  steps=steps, **sampler)
    assert torch.equal(tokens, want_tokens), (tokens, want_tokens)
    # Scores near the -inf floor (w * -1e4) carry float32 rounding of ~1e-7 of their size.
    scores = reference.combine(logits.cpu(), torch.as_tensor(weights), normalize=False,
                               vocab_size=sampler.get("vocab_size"), plausibility_alpha=sampler.get("plausibility_alpha", 0.0))
    size = float(scores[torch.isfinite(scores)].abs().max())
    torch.testing.assert_close(logprobs, want_logprobs, rtol=1e-4, atol=1e-4 + 1e-6 * size)
    if expect_path is not None:
        assert (paths.cpu() == expect_path).all(), paths
    return tokens


# ---------------------------------------------------------------------------------------------
# The backend module and the noise


def test_backend_module_contract():
    assert triton_backend.DEVICE_TYPES[0] == "cuda"
    assert triton_backend.is_available() == GPU
    if not GPU:
        assert triton_backend.is_interpreted() and "cpu" in triton_backend.DEVICE_TYPES
        assert "triton" not in steer.backends()  # interpreted: usable by name only


def test_steer_imports_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None; sys.modules['steer_kernels'] = None\n"
        "import steer, torch\n"
        "assert 'triton' not in steer.backends()\n"
        "assert steer.sample(torch.zeros(1, 1, 4), [1.0], temperature=0).tolist() == [0]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "TRITON_INTERPRET": "1"})


def test_philox_noise_is_bitwise_the_reference():
    gen = torch.Generator().manual_seed(0)
    n = 512
    seeds = torch.randint(-(2**63), 2**63 - 1, (n,), generator=gen)
    keys = torch.randint(-(2**63), 2**63 - 1, (n,), generator=gen)
    steps = torch.randint(0, 2**32, (n,), generator=gen)
    tokens = torch.randint(0, 2**31 - 1, (n,), generator=gen)
    tokens[:4] = torch.tensor([0, 1, 2**31 - 1, 50256])
    got = philox.uniform_noise(seeds.to(DEVICE), keys.to(DEVICE), steps.to(DEVICE), tokens.to(DEVICE)).cpu()
    assert torch.equal(got, reference.uniform_noise(seeds, keys, steps, tokens))


# ---------------------------------------------------------------------------------------------
# combine


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 1), (3, 3, 37), (2, 9, 257), (2, 16, 100)], ids=str)
@pytest.mark.parametrize("normalize", [True, False])
def test_combine_matches_reference_over_shapes(shape, normalize):
    logits, weights = random_logits(shape), random_weights(shape[0], shape[1])
    got = steer_kernels.combine(logits.to(DEVICE), kernel_weights(weights, shape[0]), normalize=normalize, **SMALL)
    assert_combine_matches(got, logits, weights, normalize=normalize)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("per_row", [False, True])
def test_combine_over_dtypes_and_weight_layouts(dtype, per_row):
    logits, weights = random_logits((3, 4, 133), dtype), random_weights(3, 4, per_row=per_row)
    assert_combine_matches(steer_kernels.combine(logits.to(DEVICE), kernel_weights(weights, 3), **SMALL), logits, weights)


def test_combine_through_the_public_op():
    logits, weights = random_logits((2, 3, 70)), steer_weights(0.3, 0.4, 1)
    got = steer.combine(logits.to(DEVICE), weights, backend="triton", vocab_size=64, plausibility_alpha=0.05)
    assert_combine_matches(got, logits, weights, vocab_size=64, plausibility_alpha=0.05)


def test_combine_strided_logits_and_shared_weight_row():
    base = random_logits((3, 120, 6))  # [B, V, K] storage: stride_v = K, and every second stream
    logits = base.permute(0, 2, 1)[:, ::2, :]
    weights = torch.tensor([1.4, -0.3, -0.1]).expand(3, 3)  # a row stride of 0
    got = steer_kernels.combine(logits.to(DEVICE), weights.to(DEVICE), **SMALL)
    assert_combine_matches(got, logits, weights)


def test_combine_minus_inf_rules():
    logits = random_logits((3, 4, 64))
    logits[0, 0, 5] = -INF  # the expert forbids token 5
    logits[1, 1, :10] = -INF  # base stream (negative weight): floored, finite
    logits[2, 3, 7] = -INF  # a negative stream: floored
    logits[2, 2, 9] = -INF  # a stream of weight 0: ignored
    weights = torch.tensor([[1.2, -0.2, -0.1, -0.1], [1.2, -0.2, -0.1, -0.1], [1.2, -0.2, 0.0, -0.2]])
    got = steer_kernels.combine(logits.to(DEVICE), weights.to(DEVICE), **SMALL).cpu()
    assert_combine_matches(got, logits, weights)
    assert got[0, 5] == -INF and torch.isfinite(got[0, :5]).all() and torch.isfinite(got[1:]).all()


def test_combine_padding_plausibility_and_garbage_columns():
    logits, weights = random_logits((2, 3, 70)), torch.tensor([-0.5, 1.5, -0.2])
    logits[:, :, 64:] = 100.0
    logits[0, 1, 66] = math.nan  # padding columns are never read
    logits[1, 0, 69] = INF
    logits[:, 0, :5] = -INF  # plausibility reads the raw stream 0, although its weight is negative
    kw = dict(vocab_size=64, plausibility_alpha=0.2)
    got = steer_kernels.combine(logits.to(DEVICE), kernel_weights(weights, 2), **kw, **SMALL)
    assert torch.isneginf(got[:, 64:]).all()
    assert_combine_matches(got, logits, weights, **kw)


@pytest.mark.parametrize(
    "bad, message",
    [
        ([(2, 1, 13, math.nan)], r"NaN \(batch row 2, stream 1\)"),
        ([(1, 3, 3, INF)], r"\+inf \(batch row 1, stream 3\)"),
        ([(0, 2, 30, INF), (2, 1, 13, math.nan)], r"NaN \(batch row 2, stream 1\)"),  # NaN first, as the reference
        ([(1, 3, 3, INF), (1, 2, 39, INF)], r"\+inf \(batch row 1, stream 2\)"),  # lowest (row, stream)
    ],
)
def test_nan_or_posinf_raise_the_shared_errors(bad, message):
    logits = random_logits((3, 4, 40))
    for row, stream, column, value in bad:
        logits[row, stream, column] = value
    weights = kernel_weights(steer_weights(0.2, 0.2, 2), 3)
    with pytest.raises(ValueError, match=message):
        steer_kernels.combine(logits.to(DEVICE), weights, **SMALL)
    seeds, keys, steps = (t.to(DEVICE) for t in row_keys_for(3))
    with pytest.raises(ValueError, match=message):
        steer_kernels.sample(logits.to(DEVICE), weights, seeds=seeds, row_keys=keys, steps=steps, top_k=5, **SMALL)


def test_row_without_a_finite_score_raises():
    logits = random_logits((3, 2, 50))
    logits[2, 0] = -INF
    logits[1, 0, :45] = -INF  # a few tokens left: fine
    weights = kernel_weights(steer_weights(0.2, 0.0, 0), 3)
    with pytest.raises(ValueError, match="row 2 has no token"):
        steer_kernels.combine(logits.to(DEVICE), weights, **SMALL)
    seeds, keys, steps = (t.to(DEVICE) for t in row_keys_for(3))
    with pytest.raises(ValueError, match="row 2 has no token"):
        steer_kernels.sample(logits.to(DEVICE), weights, seeds=seeds, row_keys=keys, steps=steps, **SMALL)


# ---------------------------------------------------------------------------------------------
# sample: exact tokens of the reference

SAMPLERS = [
    {"temperature": 1.0},
    {"temperature": 0.7, "top_k": 10},
    {"temperature": 1.2, "top_p": 0.9},
    {"temperature": 1.0, "top_k": 50, "top_p": 0.8, "plausibility_alpha": 0.01},
    {"temperature": 0.0},
    {"temperature": 0.0, "top_k": 5, "top_p": 0.9},
]


@pytest.mark.parametrize("sampler", SAMPLERS, ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1), (4, 3, 257)], ids=str)
def test_tokens_are_exactly_the_reference_draws(sampler, shape):
    logits = random_logits(shape, scale=2.0)
    weights = steer_weights(0.3, 0.4, shape[1] - 2) if shape[1] >= 2 else [1.0]
    assert_sample_matches(logits, weights, **sampler)


@pytest.mark.parametrize("num_streams", [1, 2, 3, 5, 7, 9, 16])
def test_any_number_of_streams(num_streams):
    logits = random_logits((2, num_streams, 37), seed=num_streams)
    weights = random_weights(2, num_streams, seed=num_streams, per_row=True)
    assert_sample_matches(logits, weights, temperature=0.9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_are_read_natively(dtype):
    logits = random_logits((3, 4, 300), dtype, scale=2.0)
    assert_sample_matches(logits, random_weights(3, 4), top_k=3, temperature=0.8)


def test_strided_logits_and_expanded_keys():
    logits = random_logits((2, 150, 5)).permute(0, 2, 1)  # stride_v = K
    weights = torch.tensor([1.3, -0.1, -0.1, -0.05, -0.05])
    seeds, keys, steps = torch.tensor(3).expand(2), torch.tensor([5, 9]), torch.tensor(2).expand(2)  # stride 0
    tokens, _ = kernel_sample(logits, weights, seeds=seeds, row_keys=keys, steps=steps, top_p=0.95)
    want, _ = reference.sample(logits, weights.expand(2, 5), seeds=seeds, row_keys=keys, steps=steps, top_p=0.95)
    assert torch.equal(tokens, want)


def test_minus_inf_and_padding_are_never_drawn():
    logits = random_logits((6, 3, 40), scale=0.1)
    logits[:, 0, ::2] = -INF  # the expert forbids every even token
    logits[:, 1, 1:9:2] = -INF  # the base stream (negative weight) floors: those tokens become likely
    logits[:, :, 32:] = 50.0  # padded LM-head columns
    for sampler in ({}, {"top_k": 3}, {"top_p": 0.5}):
        tokens = assert_sample_matches(logits, steer_weights(0.5, 0.5, 1), vocab_size=32, **sampler)
        assert (tokens % 2 == 1).all() and (tokens < 32).all()


def test_greedy_ties_go_to_the_lowest_id():
    logits = torch.zeros(2, 1, 200)
    logits[0, 0, [150, 40, 199]] = 5.0
    logits[1, 0, [3, 100]] = 7.0
    tokens = assert_sample_matches(logits, [1.0], temperature=0.0, top_k=3)
    assert tokens.tolist() == [40, 3]


def test_public_op_and_batch_composition():
    """steer.sample(backend="triton"): a row's tokens depend on its seed, key and step only."""
    logits, weights = random_logits((6, 3, 100), scale=0.5), steer_weights(0.2, 0.2, 1)
    keys = torch.arange(100, 106)
    kw = dict(seed=1, step=3, top_k=4, backend="triton")
    full = steer.sample(logits.to(DEVICE), weights, row_keys=keys.to(DEVICE), **kw).cpu()
    subset = torch.tensor([4, 1, 5])
    alone = steer.sample(logits[subset].to(DEVICE), weights, row_keys=keys[subset].to(DEVICE), **kw).cpu()
    assert torch.equal(full[subset], alone)
    assert torch.equal(full, steer.sample(logits, weights, row_keys=keys, **{**kw, "backend": "torch"}))


def test_chunking_does_not_change_the_draw():
    logits, weights = random_logits((3, 3, 257)), steer_weights(0.3, 0.3, 1)
    seeds, keys, steps = row_keys_for(3)
    draws = [
        kernel_sample(logits, weights, seeds=seeds, row_keys=keys, steps=steps, top_k=3, knobs=knobs)[0]
        for knobs in ({"block": 16, "chunk": 32}, {"block": 64, "chunk": 128}, {"block": 256})
    ]
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[1], draws[2])


def test_seeds_and_steps_change_the_draw():
    logits, weights = random_logits((8, 2, 100), scale=0.2), torch.tensor([1.2, -0.2])
    seeds, keys, steps = row_keys_for(8)
    first = kernel_sample(logits, weights, seeds=seeds, row_keys=keys, steps=steps)[0]
    again = kernel_sample(logits, weights, seeds=seeds, row_keys=keys, steps=steps)[0]
    later = kernel_sample(logits, weights, seeds=seeds, row_keys=keys, steps=steps + 1)[0]
    other = kernel_sample(logits, weights, seeds=seeds + 1, row_keys=keys, steps=steps)[0]
    assert torch.equal(first, again) and not torch.equal(first, later) and not torch.equal(first, other)


# ---------------------------------------------------------------------------------------------
# sample: ties at the top-k boundary and the exact fallbacks of the second stage


def tied_logits(batch=3, vocab=257):
    """Three clear winners, then 40 tokens tied at 2.0 spread over every chunk, then noise < 1."""
    logits = random_logits((batch, 1, vocab), scale=0.2) - 1.0
    logits[:, 0, 1::6][:, :40] = 2.0
    logits[:, 0, [0, 100, 256]] = 3.0
    return logits


@pytest.mark.parametrize("sampler", [{"top_k": 10}, {"top_k": 10, "top_p": 0.9}, {"top_k": 10, "temperature": 0}])
def test_ties_with_the_kth_score_spilling_out_of_the_lists(sampler):
    """Every tied token is kept, as in the reference; the lists cannot hold them: exact path."""
    tokens = assert_sample_matches(tied_logits(), [1.0], expect_path=1, **sampler)
    assert sampler.get("temperature") == 0 or (tokens >= 0).all()


def test_ties_with_the_kth_score_inside_the_lists():
    logits = random_logits((3, 1, 257), scale=0.2) - 1.0
    logits[:, 0, [5, 60, 200]] = 2.0  # top_k = 2 -> k-th = 2.0, three tied tokens, lists of 4
    logits[:, 0, 130] = 3.0
    assert_sample_matches(logits, [1.0], expect_path=0, top_k=2)


def test_top_p_nucleus_beyond_the_candidates_takes_the_exact_path():
    logits = random_logits((3, 2, 257), scale=0.3)  # nearly flat: a nucleus of ~200 tokens
    assert_sample_matches(logits, [1.1, -0.1], expect_path=1, top_p=0.9)
    assert_sample_matches(logits, [1.1, -0.1], expect_path=1, top_p=0.9, temperature=0)


def test_top_p_after_top_k_decides_from_the_lists():
    logits = random_logits((2, 2, 257), scale=0.3)  # the top 60 all in the nucleus: lists of 64 hold them
    assert_sample_matches(logits, [1.1, -0.1], expect_path=0, top_p=0.95, top_k=60)


def test_top_p_nucleus_inside_the_candidates_takes_the_fast_path():
    logits = random_logits((3, 2, 257), scale=4.0)  # peaked: a nucleus of a few tokens
    assert_sample_matches(logits, [1.1, -0.1], expect_path=0, top_p=0.8)


@pytest.mark.parametrize("sampler", [{"top_k": 40}, {"top_k": 40, "top_p": 0.7}, {"top_k": 40, "temperature": 0}])
def test_top_k_beyond_the_list_size_is_an_exact_search(sampler):
    knobs = {**SMALL_SAMPLE, "topk_candidates_max": 16}
    assert_sample_matches(random_logits((3, 2, 257)), [1.1, -0.1], knobs=knobs, expect_path=1, **sampler)
    assert_sample_matches(tied_logits(), [1.0], knobs=knobs, expect_path=1, **sampler)


def test_top_k_at_least_the_vocabulary_is_no_filter():
    logits = random_logits((2, 2, 30))
    assert_sample_matches(logits, [1.1, -0.1], expect_path=0, top_k=30)
    assert_sample_matches(logits, [1.1, -0.1], top_k=29)


def test_fewer_finite_tokens_than_top_k():
    logits = random_logits((2, 1, 100))
    logits[:, 0, 7:] = -INF
    assert_sample_matches(logits, [1.0], top_k=20)
    assert_sample_matches(logits, [1.0], top_k=20, top_p=0.5)


# ---------------------------------------------------------------------------------------------
# the synchronisation-free launcher


def test_launch_sample_writes_into_given_buffers_without_raising():
    logits, weights = random_logits((3, 2, 64)), kernel_weights([1.1, -0.1], 3)
    logits[1, 1, 9] = math.nan
    seeds, keys, steps = (t.to(DEVICE) for t in row_keys_for(3))
    tokens = torch.full((3,), -1, dtype=torch.int64, device=DEVICE)
    logprobs = torch.zeros(3, device=DEVICE)
    err = torch.zeros(3, dtype=torch.int64, device=DEVICE)
    steer_kernels.launch_sample(logits.to(DEVICE), weights, seeds, keys, steps, tokens, logprobs, err,
                                temperature=1.0, top_k=0, top_p=1.0, vocab_size=64, plausibility_alpha=0.0)
    assert err.tolist() == [1 * 2 + 1, streams.NO_ERROR, streams.NO_ERROR]
    want, _ = reference.sample(logits[[0, 2]], [1.1, -0.1], seeds=seeds[[0, 2]].cpu(), row_keys=keys[[0, 2]].cpu(),
                               steps=steps[[0, 2]].cpu())
    assert torch.equal(tokens[[0, 2]].cpu(), want)


# ---------------------------------------------------------------------------------------------
# compiled for a real GPU (no GPU needed: triton ships ptxas), which the interpreter never does


def test_every_kernel_variant_compiles_for_sm90():
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "0")
    result = subprocess.run([sys.executable, "-m", "steer_kernels.compile_check"], env=env, capture_output=True,
                            text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "FAILED" not in result.stdout


# ---------------------------------------------------------------------------------------------
# full size, on a GPU


@needs_gpu
@pytest.mark.parametrize("shape", [(1, 3, 128256), (8, 7, 50257), (64, 7, 128256), (4, 16, 50257)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_full_size_combine(shape, dtype):
    logits, weights = random_logits(shape, dtype), random_weights(shape[0], shape[1], per_row=True)
    for normalize in (True, False):
        got = steer.combine(logits.cuda(), weights.cuda(), normalize=normalize, backend="triton")
        assert_combine_matches(got, logits, weights, normalize=normalize)


FULL_SAMPLERS = SAMPLERS + [{"top_k": 1000}, {"top_p": 0.99}, {"top_k": 256, "top_p": 0.95, "temperature": 1.3}]


@needs_gpu
@pytest.mark.parametrize("sampler", FULL_SAMPLERS, ids=str)
@pytest.mark.parametrize("shape", [(1, 7, 128256), (8, 7, 50257), (64, 3, 128256)], ids=str)
def test_full_size_tokens_are_the_reference_draws(sampler, shape):
    logits = random_logits(shape, scale=2.0)
    weights = steer_weights(0.3, 0.4, shape[1] - 2)
    assert_sample_matches(logits, weights, knobs={}, **sampler)


@needs_gpu
def test_full_size_through_auto_and_half_precision():
    logits = random_logits((16, 7, 128256), torch.bfloat16, scale=2.0)
    weights = steer_weights(0.2, 0.6, 5)
    assert steer.backends("sample")[0] in ("cuda", "triton")
    tokens = steer.sample(logits.cuda(), weights, seed=5, top_k=10, backend="triton").cpu()
    seeds, keys, steps = torch.full((16,), 5), torch.arange(16), torch.zeros(16, dtype=torch.long)
    want, _ = reference.sample(logits, weights, seeds=seeds, row_keys=keys, steps=steps, top_k=10)
    assert torch.equal(tokens, want)


@needs_gpu
def test_cuda_graph_replays_the_sampler():
    batch, shape = 8, (8, 7, 50257)
    logits = random_logits(shape, scale=2.0).cuda()
    weights = kernel_weights(steer_weights(0.3, 0.4, 5), batch)
    seeds = torch.full((batch,), 11, device="cuda")
    keys = torch.arange(batch, device="cuda")
    steps = torch.zeros(batch, dtype=torch.int64, device="cuda")
    tokens = torch.empty(batch, dtype=torch.int64, device="cuda")
    logprobs = torch.empty(batch, device="cuda")
    err = torch.empty(3, dtype=torch.int64, device="cuda")
    kw = dict(temperature=0.8, top_k=50, top_p=0.9, vocab_size=shape[-1], plausibility_alpha=0.0)

    def launch():
        steer_kernels.launch_sample(logits, weights, seeds, keys, steps, tokens, logprobs, err, **kw)

    launch()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        launch()
    for step in range(3):
        steps.fill_(step)
        logits.copy_(random_logits(shape, seed=step, scale=2.0))
        graph.replay()
        want, _ = reference.sample(logits.cpu(), weights.cpu(), seeds=seeds.cpu(), row_keys=keys.cpu(),
                                   steps=steps.cpu(), temperature=0.8, top_k=50, top_p=0.9)
        assert torch.equal(tokens.cpu(), want)
        assert err.tolist() == [streams.NO_ERROR] * 3


@needs_gpu
@pytest.mark.skipif("cuda" not in steer.backends("sample") if GPU else True, reason="needs the cuda backend")
def test_triton_and_cuda_backends_agree():
    logits, weights = random_logits((32, 7, 128256), scale=2.0).cuda(), steer_weights(0.3, 0.4, 5)
    for sampler in SAMPLERS:
        got = [steer.sample(logits, weights, seed=3, backend=b, return_logprobs=True, **sampler) for b in ("triton", "cuda")]
        assert torch.equal(got[0][0], got[1][0])
        torch.testing.assert_close(got[0][1], got[1][1], rtol=1e-4, atol=1e-4)
