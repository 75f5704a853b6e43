"""steer.combine: every backend usable here against the reference."""

import math

import pytest
import torch

import steer
from backend_devices import run
from steer import reference, steer_weights

BACKENDS = steer.backends("combine")
SHAPES = [(1, 1, 1), (2, 3, 1), (3, 3, 17), (4, 7, 1001), (2, 9, 50257), (2, 3, 128256)]


def random_logits(shape, dtype=torch.float32, seed=0, scale=4.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * scale).to(dtype)


def random_weights(batch, streams, seed=0, per_row=False):
    gen = torch.Generator().manual_seed(seed + 1)
    shape = (batch, streams) if per_row else (streams,)
    weights = -torch.rand(shape, generator=gen)
    weights[..., 0] = 1.0 + torch.rand(shape[:-1], generator=gen)
    return weights


def assert_matches_reference(got, logits, weights, **kwargs):
    want = reference.combine(logits, weights, **kwargs)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.equal(torch.isneginf(got), torch.isneginf(want))
    finite = torch.isfinite(want)
    scale = want[finite].abs().max().clamp(min=1.0)
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=float(scale) * 2e-6 + 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("normalize", [True, False])
def test_matches_reference_over_shapes(backend, shape, normalize):
    logits, weights = random_logits(shape), random_weights(shape[0], shape[1])
    got = run(steer.combine, logits, weights, normalize=normalize, backend=backend)
    assert_matches_reference(got, logits, weights, normalize=normalize)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("per_row", [False, True])
def test_matches_reference_over_dtypes_and_weight_layouts(backend, dtype, per_row):
    logits, weights = random_logits((5, 4, 333), dtype), random_weights(5, 4, per_row=per_row)
    assert_matches_reference(run(steer.combine, logits, weights, backend=backend), logits, weights)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_logits(backend):
    logits = random_logits((3, 6, 120))[:, ::2, ::3]  # strided streams and vocabulary
    weights = random_weights(3, 3)
    assert_matches_reference(run(steer.combine, logits, weights, backend=backend), logits, weights)


@pytest.mark.parametrize("backend", BACKENDS)
def test_minus_inf_rules(backend):
    logits = random_logits((3, 4, 64))
    logits[0, 0, 5] = -math.inf  # expert forbids token 5 -> never possible
    logits[1, 1, :10] = -math.inf  # base stream (weight -gamma) -> floored, finite
    logits[2, 3, 7] = -math.inf  # a negative stream -> floored, finite
    logits[2, 2, 9] = -math.inf  # a stream of weight 0 -> ignored
    weights = torch.tensor([[1.2, -0.2, -0.1, -0.1], [1.2, -0.2, -0.1, -0.1], [1.2, -0.2, 0.0, -0.2]])
    got = run(steer.combine, logits, weights, backend=backend)
    assert_matches_reference(got, logits, weights)
    assert got[0, 5] == -math.inf and torch.isfinite(got[0, :5]).all()
    assert torch.isfinite(got[1:]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_padded_vocabulary_is_never_kept(backend):
    logits, weights = random_logits((2, 3, 70)), steer_weights(0.2, 0.2, 1)
    logits[:, :, 64:] = 100.0  # padded LM-head rows with large garbage
    got = run(steer.combine, logits, weights, vocab_size=64, backend=backend)
    assert torch.isneginf(got[:, 64:]).all()
    assert_matches_reference(got, logits, weights, vocab_size=64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_plausibility_floor(backend):
    logits, weights = random_logits((3, 3, 200)), steer_weights(0.5, 0.5, 1)
    got = run(steer.combine, logits, weights, plausibility_alpha=0.1, backend=backend)
    assert_matches_reference(got, logits, weights, plausibility_alpha=0.1)
    assert torch.isneginf(got).any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_or_posinf_raises(backend, bad):
    logits = random_logits((3, 4, 40))
    logits[2, 1, 13] = bad
    with pytest.raises(ValueError, match="row 2, stream 1"):
        run(steer.combine, logits, steer_weights(0.2, 0.2, 2), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_without_any_possible_token_raises(backend):
    logits = random_logits((2, 2, 8))
    logits[1, 0] = -math.inf
    with pytest.raises(ValueError, match="row 1 has no token"):
        run(steer.combine, logits, steer_weights(0.2, 0.0, 0), backend=backend)


@pytest.mark.parametrize(
    "logits, weights, message",
    [
        (torch.zeros(3, 5), [1.0], "shape \\[B, K, V\\]"),
        (torch.zeros(2, 3, 5, dtype=torch.float64), [1.0, 0, 0], "float32, float16 or bfloat16"),
        (torch.zeros(2, 3, 5), [1.0, 0.0], "3 streams"),
        (torch.zeros(2, 3, 5), torch.zeros(3, 3), "per-row weights"),
        (torch.zeros(2, 3, 5), [1.0, math.nan, 0.0], "finite"),
        (torch.zeros(2, 0, 5), [], "at least one stream"),
    ],
)
def test_bad_arguments_raise_clearly(logits, weights, message):
    with pytest.raises(ValueError, match=message):
        steer.combine(logits, weights)


def test_bad_vocab_size_and_backend_names():
    logits = torch.zeros(1, 1, 5)
    with pytest.raises(ValueError, match="vocab_size"):
        steer.combine(logits, [1.0], vocab_size=6)
    with pytest.raises(ValueError, match="unknown backend"):
        steer.combine(logits, [1.0], backend="tpu")


def test_empty_batch():
    assert steer.combine(torch.zeros(0, 2, 7), [1.0, -0.5]).shape == (0, 7)


def test_auto_backend_is_listed():
    assert "torch" in steer.backends() and "torch" in BACKENDS


@pytest.mark.parametrize("backend", BACKENDS)
def test_garbage_in_padding_columns_is_ignored(backend):
    logits, weights = random_logits((2, 3, 20)), steer_weights(0.2, 0.2, 1)
    logits[0, 1, 17] = math.nan
    logits[1, 0, 19] = math.inf
    got = run(steer.combine, logits, weights, vocab_size=16, backend=backend)
    assert_matches_reference(got, logits, weights, vocab_size=16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_plausibility_reads_the_raw_expert_stream_even_with_a_negative_weight(backend):
    logits = random_logits((2, 2, 30))
    logits[:, 0, :5] = -math.inf
    weights = torch.tensor([-0.5, 1.5])
    assert_matches_reference(
        run(steer.combine, logits, weights, plausibility_alpha=0.2, backend=backend), logits, weights, plausibility_alpha=0.2
    )
