"""The oracle itself, against a float64 computation written out token by token."""

import math

import numpy as np
import pytest
import torch

from steer import reference, steer_weights


def hand_combined_logprobs(logits: np.ndarray, weights: np.ndarray, vocab_size: int) -> np.ndarray:
    """docs/design.md section 1, one row and one token at a time, in float64."""
    batch, streams, padded = logits.shape
    out = np.full((batch, padded), -np.inf)
    for b in range(batch):
        scores = []
        for v in range(vocab_size):
            total = 0.0
            for k in range(streams):
                w = weights[b, k]
                if w == 0:
                    continue
                row = logits[b, k, :vocab_size].copy()
                if w < 0:
                    row[np.isneginf(row)] = reference.NEG_INF_FLOOR
                finite = row[np.isfinite(row)]
                top = finite.max()
                logsumexp = top + math.log(sum(math.exp(x - top) for x in finite))
                total += w * (row[v] - logsumexp)
            scores.append(total)
        scores = np.array(scores)
        finite = scores[np.isfinite(scores)]
        top = finite.max()
        out[b, :vocab_size] = scores - (top + math.log(sum(math.exp(x - top) for x in finite)))
    return out


def test_reference_matches_hand_computation():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 11, generator=gen) * 3
    logits[0, 0, 2] = -math.inf  # forbidden by the expert
    logits[1, 1, 5] = -math.inf  # -inf in the negatively weighted base stream
    logits[2, 3, 0] = -math.inf  # -inf in a negative stream
    weights = torch.tensor([[1.2, -0.2, -0.1, -0.1], [1.5, -0.5, 0.0, -0.3], [1.0, 0.0, 0.0, -0.6]])
    got = reference.combine(logits, weights, vocab_size=9)
    want = hand_combined_logprobs(logits.double().numpy(), weights.double().numpy(), 9)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-4)
    assert got[0, 2] == -math.inf and torch.isinf(got[:, 9:]).all()


def test_unnormalized_equals_normalized_up_to_a_row_constant():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 5, 33, generator=gen) * 4
    weights = steer_weights(0.3, 0.4, 3)
    normalized = reference.combine(logits, weights)
    raw = reference.combine(logits, weights, normalize=False)
    np.testing.assert_allclose(torch.log_softmax(raw, -1).numpy(), normalized.numpy(), atol=1e-5)
    shift = normalized - raw
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-4)


def test_gamma_eta_zero_is_the_expert_distribution():
    logits = torch.randn(2, 4, 50)
    got = reference.combine(logits, steer_weights(0.0, 0.0, 2))
    torch.testing.assert_close(got, torch.log_softmax(logits[:, 0], -1))


def test_negative_stream_minus_inf_never_makes_inf_or_nan():
    logits = torch.zeros(1, 3, 6)
    logits[0, 1, :] = -math.inf  # every token -inf in the base stream
    logits[0, 2, 3] = -math.inf
    got = reference.combine(logits, steer_weights(0.5, 0.5, 1))
    assert torch.isfinite(got).all()
    assert got[0].argmax() == 3  # a token the negative stream forbids is pushed up, not to +inf


def test_plausibility_keeps_only_tokens_near_the_expert_best():
    logits = torch.tensor([[[0.0, -1.0, -3.0, -10.0], [0.0, 0.0, 0.0, 0.0]]])
    got = reference.combine(logits, [1.0, 0.0], plausibility_alpha=math.exp(-2.5))
    assert torch.isfinite(got[0, :2]).all() and torch.isinf(got[0, 2:]).all()


def test_filters_top_k_keeps_ties_and_top_p_keeps_minimal_set():
    scores = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]]))
    assert reference.top_k_mask(scores, 2).tolist() == [[True, True, False, False], [True] * 4]
    assert reference.top_p_mask(scores, 0.6).tolist() == [[True, True, False, False], [True] * 4]
    assert reference.top_p_mask(scores, 0.7).tolist()[0] == [True, True, False, False]
    assert reference.top_p_mask(scores, 0.71).tolist()[0] == [True, True, True, False]
    assert reference.top_p_mask(scores[:1], 0.01).tolist() == [[True, False, False, False]]


def test_probabilities_sum_to_one_and_respect_filters():
    logits = torch.randn(3, 3, 40)
    probs = reference.probabilities(logits, steer_weights(0.2, 0.2, 1), temperature=0.7, top_k=5, top_p=0.9)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, dtype=torch.float64))
    assert ((probs > 0).sum(-1) <= 5).all()


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_or_posinf_raises(bad):
    logits = torch.zeros(2, 3, 5)
    logits[1, 2, 4] = bad
    with pytest.raises(ValueError, match="row 1, stream 2"):
        reference.combine(logits, [1.0, -0.5, -0.5])


def test_philox_known_answers():
    """Random123's known-answer vectors for Philox4x32-10."""
    u32 = 0xFFFFFFFF
    cases = [
        ((0, 0), (0, 0, 0, 0), [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ((u32, u32), (u32, u32, u32, u32), [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        ((0xA4093822, 0x299F31D0), (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
    ]
    for key, counter, want in cases:
        assert [int(w) for w in reference.philox4x32(key, counter)] == want


def test_uniform_noise_is_open_unit_interval_and_uniform():
    u = reference.uniform_noise(torch.tensor(3), torch.tensor(5), torch.tensor(0), torch.arange(200_000))
    assert u.dtype == torch.float32 and 0 < u.min() and u.max() < 1
    assert abs(float(u.mean()) - 0.5) < 0.005
    histogram = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert (histogram - 0.1).abs().max() < 0.005


def test_gumbel_max_draws_follow_softmax():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    draws = 40_000
    keys = torch.arange(draws)
    tokens = reference.perturbed_argmax(scores.expand(draws, 4), torch.zeros(draws, dtype=torch.long), keys, torch.zeros_like(keys))
    frequencies = torch.bincount(tokens, minlength=4).double() / draws
    assert (frequencies - torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)).abs().max() < 0.01


@pytest.mark.parametrize("min_p, temperature", [(0.1, 1.5), (0.05, 1.0), (0.2, 0.7)])
def test_min_p_sampling_is_the_plausibility_floor_at_alpha_min_p_to_the_t(min_p, temperature):
    """The quality experiment's min-p baseline: for the expert alone (one stream, weight 1),
    min-p at temperature T (keep p_T >= min_p * max p_T, p_T = softmax(z / T), as transformers
    applies it after the temperature) is steer's plausibility floor with alpha = min_p ** T."""
    logits = torch.randn(3, 1, 50, generator=torch.Generator().manual_seed(5)) * 3
    got = reference.probabilities(logits, [1.0], temperature=temperature, plausibility_alpha=min_p**temperature)
    p_t = torch.softmax(logits[:, 0].double() / temperature, dim=-1)
    kept = torch.where(p_t >= min_p * p_t.max(dim=-1, keepdim=True).values, p_t, torch.zeros_like(p_t))
    torch.testing.assert_close(got, kept / kept.sum(dim=-1, keepdim=True), rtol=1e-6, atol=1e-9)
    assert ((got > 0).sum(dim=-1) < 50).all()  # the floor cut something
