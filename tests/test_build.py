"""The compiled extensions: steer._C imports and computes a hand-checked example; the CUDA
wrapper degrades cleanly where there is no GPU. (The parametrised backend-vs-reference tests
live in tests/ops/.)"""

import importlib
import math

import pytest
import torch

from steer.ops import compiled, cpp_backend, cuda_backend

INF = math.inf


def test_cpp_extension_imports():
    ext = importlib.import_module("steer._C")
    assert cpp_backend.is_available()
    assert ext.NEG_INF_FLOOR == -1.0e4
    assert ext.STEER_OK == 0
    assert (ext.DTYPE_FLOAT32, ext.DTYPE_FLOAT16, ext.DTYPE_BFLOAT16) == (0, 1, 2)
    assert callable(ext.combine) and callable(ext.sample)


def test_hand_made_sample():
    # Scores of the one row: 1.5 * z0 - 0.5 * z1 = [0.5, 3.0, -inf (forbidden), 2.0]; column 4 is
    # padding (vocab_size = 4), hugely likely if it were read.
    logits = torch.tensor([[[1.0, 2.0, -INF, 1.0, 50.0], [2.0, 0.0, 0.0, -1.0, 50.0]]])
    weights = torch.tensor([[1.5, -0.5]])
    keys = torch.zeros(1, dtype=torch.int64)
    common = dict(seeds=keys, row_keys=keys, steps=keys, vocab_size=4, plausibility_alpha=0.0)
    scores = torch.tensor([0.5, 3.0, 2.0])
    tokens, logprobs = cpp_backend.sample(logits, weights, temperature=0.0, top_k=0, top_p=1.0, **common)
    assert tokens.tolist() == [1]
    torch.testing.assert_close(logprobs, torch.log_softmax(scores, 0)[1:2])
    # top_k = 2 keeps tokens 1 and 3: the log-probability is over those two only, at T = 1.
    tokens, logprobs = cpp_backend.sample(logits, weights, temperature=0.0, top_k=2, top_p=1.0, **common)
    torch.testing.assert_close(logprobs, torch.log_softmax(torch.tensor([3.0, 2.0]), 0)[:1])
    # top_p = 0.5: token 1 alone holds 0.69 of the mass; sampling can only draw it.
    for seed in range(10):
        common["seeds"] = torch.tensor([seed])
        tokens, logprobs = cpp_backend.sample(logits, weights, temperature=1.0, top_k=0, top_p=0.5, **common)
        assert tokens.tolist() == [1] and logprobs.tolist() == [0.0]


def test_half_combine_is_read_natively():
    """float16 logits reach the kernel as they are: the result is that of their exact float32
    values, and no float32 copy of the logits is made (the kernel gets the half tensor's pointer)."""
    logits = (torch.randn(2, 3, 1000) * 4).half()
    weights = torch.tensor([1.2, -0.1, -0.1]).expand(2, 3)
    got = cpp_backend.combine(logits, weights, normalize=True, vocab_size=1000, plausibility_alpha=0.0)
    want = cpp_backend.combine(logits.float(), weights, normalize=True, vocab_size=1000, plausibility_alpha=0.0)
    assert torch.equal(got, want)
    assert compiled.native_buffers(logits, weights)[0] is logits


def test_hand_made_example_unnormalized():
    # Row 0 shares nothing with row 1: per-row weights (1.5, -0.5) and (1.0, 0.0).
    # Token 2 of row 0 is -inf in the positively weighted stream: forbidden.
    # Token 1 of row 0 is -inf in the negatively weighted stream: floored at -1e4, so +5000.
    # Stream 1 of row 1 has weight 0: its -inf contributes nothing (no NaN).
    # Column 3 is LM-head padding (vocab_size = 3): -inf whatever it holds.
    logits = torch.tensor(
        [
            [[1.0, 2.0, -INF, 7.0], [3.0, -INF, 0.0, 7.0]],
            [[0.5, -1.0, 2.0, 7.0], [-INF, 4.0, 1.0, 7.0]],
        ]
    )
    weights = torch.tensor([[1.5, -0.5], [1.0, 0.0]])
    got = cpp_backend.combine(logits, weights, normalize=False, vocab_size=3, plausibility_alpha=0.0)
    want = torch.tensor([[1.5 - 1.5, 3.0 + 5000.0, -INF, -INF], [0.5, -1.0, 2.0, -INF]])
    torch.testing.assert_close(got, want)


def test_hand_made_example_normalized_and_plausibility():
    logits = torch.tensor([[[0.0, math.log(2.0), math.log(0.05), 9.0], [1.0, 1.0, 1.0, 9.0]]])
    weights = torch.tensor([[1.0, 0.0]])
    got = cpp_backend.combine(logits, weights, normalize=True, vocab_size=3, plausibility_alpha=0.0)
    want = torch.log(torch.tensor([1.0, 2.0, 0.05]) / 3.05)
    torch.testing.assert_close(got[0, :3], want)
    assert got[0, 3] == -INF
    # alpha = 0.1: keep tokens within log(0.1) of the best expert logit log(2): 0.05 < 0.2 goes.
    got = cpp_backend.combine(logits, weights, normalize=True, vocab_size=3, plausibility_alpha=0.1)
    want = torch.log(torch.tensor([1.0, 2.0]) / 3.0)
    torch.testing.assert_close(got[0, :2], want)
    assert got[0, 2] == -INF and got[0, 3] == -INF


def test_strided_and_half_inputs_match_contiguous_float32():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(3, 40_000, 4, generator=gen) * 3  # [B, V, K] storage: stride_v = K
    logits = base.permute(0, 2, 1)
    weights = torch.tensor([[1.4, -0.2, -0.1, -0.1]]).expand(3, 4)
    kwargs = dict(normalize=True, vocab_size=39_999, plausibility_alpha=0.01)
    want = cpp_backend.combine(logits.contiguous(), weights.contiguous(), **kwargs)
    torch.testing.assert_close(cpp_backend.combine(logits, weights, **kwargs), want)
    half = logits.to(torch.bfloat16)
    torch.testing.assert_close(
        cpp_backend.combine(half, weights, **kwargs), cpp_backend.combine(half.float(), weights, **kwargs)
    )


def test_empty_batch():
    got = cpp_backend.combine(torch.empty(0, 2, 5), torch.empty(0, 2), normalize=True, vocab_size=5, plausibility_alpha=0.0)
    assert got.shape == (0, 5) and got.dtype == torch.float32


@pytest.mark.parametrize(
    "bad, message",
    [
        (math.nan, r"NaN \(batch row 1, stream 2\)"),
        (INF, r"\+inf \(batch row 1, stream 2\)"),
    ],
)
def test_errors_name_the_first_bad_row_and_stream(bad, message):
    logits = torch.zeros(3, 3, 6)
    logits[2, 0, 1] = bad
    logits[1, 2, 4] = bad
    logits[0, 1, 5] = bad  # padding column (vocab_size = 5): never read
    weights = torch.tensor([1.2, -0.2, 0.0]).expand(3, 3)
    with pytest.raises(ValueError, match=message):
        cpp_backend.combine(logits, weights, normalize=False, vocab_size=5, plausibility_alpha=0.0)


def test_nan_is_reported_before_posinf():
    logits = torch.zeros(2, 2, 4)
    logits[0, 0, 0] = INF
    logits[1, 1, 3] = math.nan
    with pytest.raises(ValueError, match=r"NaN \(batch row 1, stream 1\)"):
        cpp_backend.combine(logits, torch.ones(2, 2), normalize=True, vocab_size=4, plausibility_alpha=0.0)


def test_row_with_no_finite_token_is_an_error():
    logits = torch.zeros(2, 2, 3)
    logits[1, 0] = -INF
    with pytest.raises(ValueError, match="batch row 1 has no token"):
        cpp_backend.combine(logits, torch.tensor([1.0, -0.5]).expand(2, 2), normalize=True, vocab_size=3, plausibility_alpha=0.0)


def test_cuda_wrapper_reports_unavailable_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present; tests/ops covers the cuda backend")
    assert cuda_backend.is_available() is False
