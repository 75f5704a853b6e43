"""steer.ops.exempt_from_negatives: folded into the logits, every backend draws what the literal
formula (steer.reference with ``exempt``) gives: the exempt token scored without the negatives."""

import math

import pytest
import torch

import steer
from backend_devices import run
from steer import reference, steer_weights
from steer.ops import exempt_from_negatives

BACKENDS = steer.backends("sample")


def random_logits(shape, seed=0, scale=3.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def cases():
    """(logits, weights, tokens, negative streams) in the layouts steer uses."""
    concat = random_logits((6, 3, 97))
    yield "concat", concat, steer_weights(0.3, 0.6, 1), torch.tensor([5, 5, -1, 0, 96, 5]), [2]
    separate = random_logits((4, 7, 257), seed=1)
    yield "separate", separate, steer_weights(0.2, 0.4, 5), torch.tensor([3, 7, 11, 256]), range(2, 7)
    # The engine's layout: expert, negatives, base; rows with fewer negatives have 0 weights.
    per_row = torch.tensor([[1.2, -0.3, -0.3, -0.2], [1.2, -0.6, 0.0, -0.2], [1.0, 0.0, 0.0, 0.0]])
    yield "per-row", random_logits((3, 4, 50), seed=2), per_row, torch.tensor([1, 2, 3]), [1, 2]


CASES = list(cases())


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_the_folded_logits_give_the_literal_distribution(case):
    _, logits, weights, tokens, streams = case
    want = reference.probabilities(logits, weights, exempt=(tokens, streams))
    got = reference.probabilities(exempt_from_negatives(logits, weights, tokens, streams), weights)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    plain = reference.probabilities(logits, weights)
    changed = tokens >= 0
    assert not torch.allclose(plain[changed], want[changed]), "the exemption changed nothing"


def test_the_contrast_decides_the_exempt_token_and_steer_the_rest():
    """By hand, from the formula: p'(t) = softmax((1+g) lE - g lB)(t); the other tokens keep
    STEER's ratios."""
    logits, tokens = random_logits((2, 3, 40), seed=3), torch.tensor([4, 9])
    weights = steer_weights(0.5, 0.6, 1)
    got = reference.probabilities(exempt_from_negatives(logits, weights, tokens, [2]), weights)
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    steer = torch.softmax(1.5 * logprobs[:, 0] - 0.5 * logprobs[:, 1] - 0.6 * logprobs[:, 2], dim=-1)
    contrast = torch.softmax(1.5 * logprobs[:, 0] - 0.5 * logprobs[:, 1], dim=-1)
    for row, token in enumerate(tokens.tolist()):
        assert abs(got[row, token] - contrast[row, token]) < 1e-6
        others = [v for v in range(40) if v != token]
        want = steer[row, others] * (1 - contrast[row, token]) / (1 - steer[row, token])
        torch.testing.assert_close(got[row, others], want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_every_backend_draws_the_literal_tokens(backend, case):
    _, logits, weights, tokens, streams = case
    batch = logits.shape[0]
    seeds, keys = torch.full((batch,), 7), torch.arange(batch) * 3 + 1
    for step in range(4):
        want, want_logprobs = reference.sample(logits, weights, seeds=seeds, row_keys=keys, steps=torch.full((batch,), step),
                                               exempt=(tokens, streams), top_k=20)  # fmt: skip
        folded = exempt_from_negatives(logits, weights, tokens, streams)
        got, logprobs = run(steer.sample, folded, weights, seed=seeds, row_keys=keys, step=step, top_k=20,
                            return_logprobs=True, backend=backend)  # fmt: skip
        assert torch.equal(got, want)
        torch.testing.assert_close(logprobs, want_logprobs, rtol=1e-4, atol=1e-4)


def test_minus_infinity_in_a_stream():
    logits = random_logits((4, 3, 30), seed=4)
    logits[0, 2, 5] = -math.inf  # the negative context forbids the exempt token
    logits[1, 2, :] = -math.inf
    logits[1, 2, 0] = 0.0
    logits[2, 0, 5] = -math.inf  # the expert forbids it: it stays forbidden
    logits[3, 0, :] = -math.inf
    logits[3, 0, 5] = 0.0  # the expert allows only it: it stays the only token
    weights = steer_weights(0.2, 0.6, 1)
    tokens = torch.full((4,), 5)
    folded = exempt_from_negatives(logits, weights, tokens, [2])
    assert torch.isfinite(folded[[0, 1, 3], 2, 5]).all() and torch.isneginf(folded[2, 0, 5])
    want = reference.probabilities(logits, weights, exempt=(tokens, [2]))
    torch.testing.assert_close(reference.probabilities(folded, weights), want, rtol=1e-4, atol=1e-6)
    assert want[2, 5] == 0 and want[3, 5] == 1


def test_in_place_writes_the_callers_tensor_and_copies_do_not():
    logits = random_logits((2, 3, 20), seed=5)
    before = logits.clone()
    copy = exempt_from_negatives(logits, steer_weights(0.2, 0.4, 1), 3, [2])
    assert torch.equal(logits, before) and not torch.equal(copy, before)
    same = exempt_from_negatives(logits, steer_weights(0.2, 0.4, 1), 3, [2], in_place=True)
    assert same.data_ptr() == logits.data_ptr() and torch.equal(logits, copy)


def test_nothing_to_exempt_is_a_copy():
    logits = random_logits((2, 3, 20), seed=6)
    assert torch.equal(exempt_from_negatives(logits, steer_weights(0.2, 0.0, 1), 3, [2]), logits)  # eta 0
    assert torch.equal(exempt_from_negatives(logits, steer_weights(0.2, 0.4, 1), -1, [2]), logits)
    assert torch.equal(exempt_from_negatives(logits, steer_weights(0.2, 0.4, 1), 3, []), logits)


@pytest.mark.parametrize("tokens, streams, message", [
    (20, [2], r"tokens must be token ids in \[0, 20\) or -1"),
    (-2, [2], r"tokens must be token ids"),
    (torch.tensor([1.0, 2.0]), [2], "tokens must be an int or an integer tensor"),
    (torch.tensor([[1, 2]]), [2], "tokens must be an int or an integer tensor"),
    (3, [3], r"streams must be distinct indices in \[0, 3\)"),
    (3, [2, 2], "streams must be distinct"),
    (3, "ab", "streams must be a sequence of stream indices"),
])  # fmt: skip
def test_bad_arguments_are_named(tokens, streams, message):
    with pytest.raises(ValueError, match=message):
        exempt_from_negatives(random_logits((2, 3, 20)), steer_weights(0.2, 0.4, 1), tokens, streams)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_the_gpu_it_folds_what_the_cpu_folds():
    _, logits, weights, tokens, streams = CASES[2]
    on_gpu = exempt_from_negatives(logits.cuda(), weights, tokens.cuda(), streams)
    torch.testing.assert_close(on_gpu.cpu(), exempt_from_negatives(logits, weights, tokens, streams), rtol=1e-5, atol=1e-5)
