"""SteerLogitsProcessor inside ``generate`` against the uncached, one-sample-at-a-time oracle."""

import pytest
import torch
from tiny_models import EOS, PAD, VOCAB, expert_and_base, left_padded, tiny_gpt2, tiny_llama
from transformers import LogitsProcessorList

from steer import SteerLogitsProcessor
from steer.hf.uncached import steer_generate_uncached

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [3, 4, 5, 6, 7, 8, 12], [40]]
CONCAT_NEGATIVES = [[20, 21, 22, 23], [30, 31], [50], [60, 61, 62, 63, 64, 65]]
SEPARATE_NEGATIVES = [[[20, 21, 22], [23, 24]], [[30, 31], [40, 41, 42, 43], [44]], [[50]], [[60, 61], [62]]]
NEW_TOKENS = 10


def as_streams(negatives):
    """Row entries as the processor takes them: a tensor (concat) or a list of tensors (separate)."""
    return [torch.tensor(e) if isinstance(e[0], int) else [torch.tensor(s) for s in e] for e in negatives]


def generate(expert, processor, prompts, **kwargs):
    ids, mask = left_padded(prompts)
    out = expert.generate(
        input_ids=ids, attention_mask=mask, logits_processor=LogitsProcessorList([processor]),
        max_new_tokens=NEW_TOKENS, pad_token_id=PAD, eos_token_id=EOS, **kwargs,
    )
    return [row[ids.shape[1]:] for row in out]


def strip_after_eos(tokens: torch.Tensor) -> list[int]:
    tokens = tokens.tolist()
    return tokens[: tokens.index(EOS) + 1] if EOS in tokens else tokens


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("negatives", [CONCAT_NEGATIVES, SEPARATE_NEGATIVES], ids=["concat", "separate"])
@pytest.mark.parametrize("gamma, eta", [(0.5, 0.6), (0.0, 0.8), (0.7, 0.0)])
def test_greedy_matches_the_formula_for_every_row_of_a_padded_batch(arch, negatives, gamma, eta):
    expert, base = expert_and_base(arch)
    streams = as_streams(negatives)
    processor = SteerLogitsProcessor(expert, base, streams, gamma=gamma, eta=eta)
    got = generate(expert, processor, PROMPTS, do_sample=False)
    for row, prompt in enumerate(PROMPTS):
        row_streams = streams[row] if isinstance(streams[row], list) else [streams[row]]
        want = steer_generate_uncached(
            expert, base, torch.tensor(prompt), row_streams, gamma=gamma, eta=eta,
            max_new_tokens=NEW_TOKENS, eos_token_id=EOS,
        )
        assert strip_after_eos(got[row]) == want.tolist(), f"row {row}"


def test_steering_changes_the_output():
    expert, base = expert_and_base("llama")
    plain = generate(expert, SteerLogitsProcessor(expert, base, None, gamma=0.0, eta=0.0), PROMPTS, do_sample=False)
    steered = generate(expert, SteerLogitsProcessor(expert, base, as_streams(CONCAT_NEGATIVES), gamma=1.0, eta=0.9), PROMPTS, do_sample=False)
    assert any(not torch.equal(a, b) for a, b in zip(plain, steered))


@pytest.mark.parametrize("do_sample", [False, True])
def test_gamma_eta_zero_reproduces_plain_decoding(do_sample):
    expert, base = expert_and_base("gpt2")
    ids, mask = left_padded(PROMPTS)
    common = dict(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, pad_token_id=PAD, do_sample=do_sample, top_k=10)
    torch.manual_seed(11)
    plain = expert.generate(**common)
    processor = SteerLogitsProcessor(expert, base, as_streams(CONCAT_NEGATIVES), gamma=0.0, eta=0.0)
    torch.manual_seed(11)
    steered = expert.generate(**common, logits_processor=LogitsProcessorList([processor]))
    assert torch.equal(plain, steered)


def test_shared_negative_tensor_and_2d_negatives_with_mask():
    expert, base = expert_and_base("llama")
    shared = torch.tensor([20, 21, 22])
    got_shared = generate(expert, SteerLogitsProcessor(expert, base, shared, gamma=0.3, eta=0.5), PROMPTS, do_sample=False)
    as_list = [shared] * len(PROMPTS)
    got_list = generate(expert, SteerLogitsProcessor(expert, base, as_list, gamma=0.3, eta=0.5), PROMPTS, do_sample=False)
    assert all(torch.equal(a, b) for a, b in zip(got_shared, got_list))
    padded, mask = left_padded(CONCAT_NEGATIVES)
    from_2d = SteerLogitsProcessor(expert, base, padded, negative_attention_mask=mask, gamma=0.3, eta=0.5)
    from_lists = SteerLogitsProcessor(expert, base, as_streams(CONCAT_NEGATIVES), gamma=0.3, eta=0.5)
    assert all(
        torch.equal(a, b)
        for a, b in zip(generate(expert, from_2d, PROMPTS, do_sample=False), generate(expert, from_lists, PROMPTS, do_sample=False))
    )


def test_processor_can_be_reused_across_generate_calls():
    expert, base = expert_and_base("llama")
    processor = SteerLogitsProcessor(expert, base, as_streams(CONCAT_NEGATIVES), gamma=0.5, eta=0.5)
    first = generate(expert, processor, PROMPTS, do_sample=False)
    second = generate(expert, processor, PROMPTS, do_sample=False)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_sampling_is_reproducible_and_stays_in_the_vocabulary():
    expert, base = expert_and_base("gpt2")
    processor = SteerLogitsProcessor(expert, base, as_streams(SEPARATE_NEGATIVES), gamma=0.2, eta=0.2)
    torch.manual_seed(5)
    first = generate(expert, processor, PROMPTS, do_sample=True, top_k=10)
    torch.manual_seed(5)
    second = generate(expert, processor, PROMPTS, do_sample=True, top_k=10)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_padded_lm_head_with_explicit_vocab_size():
    expert, base = tiny_llama(seed=1, vocab_size=VOCAB + 8), tiny_llama(seed=2)
    with pytest.raises(ValueError, match="different vocabularies"):
        SteerLogitsProcessor(expert, base, torch.tensor([20, 21]))
    processor = SteerLogitsProcessor(expert, base, torch.tensor([20, 21]), vocab_size=VOCAB, gamma=0.4, eta=0.4)
    for row in generate(expert, processor, PROMPTS, do_sample=True, top_k=0):
        assert int(row.max()) < VOCAB


def test_different_tokenizers_are_refused():
    expert = tiny_llama(seed=1)
    base = tiny_gpt2(seed=2)
    base.config.eos_token_id = 7
    with pytest.raises(ValueError, match="do not share a tokenizer"):
        SteerLogitsProcessor(expert, base, torch.tensor([3]))


def test_negative_list_must_match_the_batch():
    expert, base = expert_and_base("llama")
    processor = SteerLogitsProcessor(expert, base, as_streams(CONCAT_NEGATIVES[:3]), gamma=0.2, eta=0.2)
    with pytest.raises(ValueError, match="3 entries but the batch has 4 rows"):
        generate(expert, processor, PROMPTS, do_sample=False)


@pytest.mark.parametrize(
    "negatives, kwargs, message",
    [
        (None, {"eta": 0.2}, "needs negative_input_ids"),
        ([torch.tensor([], dtype=torch.long)], {}, "is empty"),
        ([torch.tensor([1, VOCAB + 3])], {}, "outside the model's vocabulary"),
        ([torch.tensor([1.0, 2.0])], {}, "tensor of token ids"),
        ("hello", {}, "must be a 1-D LongTensor"),
        (torch.tensor([3, 4]), {"gamma": -1.0}, "gamma"),
        (torch.tensor([3, 4]), {"plausibility_alpha": 2.0}, "plausibility_alpha"),
        (torch.tensor([[3, 4]]), {"negative_attention_mask": torch.ones(2, 2)}, "negative_attention_mask has 2 rows"),
    ],
)
def test_bad_arguments_raise_clearly(negatives, kwargs, message):
    expert, base = expert_and_base("llama")
    with pytest.raises(ValueError, match=message):
        SteerLogitsProcessor(expert, base, negatives, **kwargs)


def test_plausibility_floor_matches_the_formula():
    expert, base = expert_and_base("llama")
    streams = as_streams(SEPARATE_NEGATIVES)
    processor = SteerLogitsProcessor(expert, base, streams, gamma=0.8, eta=0.8, plausibility_alpha=0.05)
    got = generate(expert, processor, PROMPTS, do_sample=False)
    for row, prompt in enumerate(PROMPTS):
        want = steer_generate_uncached(
            expert, base, torch.tensor(prompt), streams[row], gamma=0.8, eta=0.8,
            max_new_tokens=NEW_TOKENS, eos_token_id=EOS, plausibility_alpha=0.05,
        )
        assert strip_after_eos(got[row]) == want.tolist(), f"row {row}"


def test_num_return_sequences_with_one_negative_entry_per_returned_sequence():
    expert, base = expert_and_base("gpt2")
    prompts = PROMPTS[:2]
    negatives = as_streams(CONCAT_NEGATIVES[:2])
    expanded = [negatives[0], negatives[0], negatives[0], negatives[1], negatives[1], negatives[1]]
    processor = SteerLogitsProcessor(expert, base, expanded, gamma=0.3, eta=0.3)
    out = generate(expert, processor, prompts, do_sample=True, top_k=5, num_return_sequences=3)
    assert len(out) == 6
    wrong = SteerLogitsProcessor(expert, base, negatives, gamma=0.3, eta=0.3)
    with pytest.raises(ValueError, match="one entry per returned sequence"):
        generate(expert, wrong, prompts, do_sample=True, num_return_sequences=3)


def test_called_directly_outside_generate():
    """Without generate there is no recorded attention mask: the rows are taken as unpadded."""
    expert, base = expert_and_base("llama")
    negatives = as_streams(CONCAT_NEGATIVES[:2])
    processor = SteerLogitsProcessor(expert, base, negatives, gamma=0.5, eta=0.5)
    prompts = torch.tensor([[5, 6, 7], [8, 9, 10]])
    scores = expert(prompts).logits[:, -1].float()
    combined = processor(prompts, scores)
    for row in range(2):
        want = steer_generate_uncached(expert, base, prompts[row], [negatives[row]], gamma=0.5, eta=0.5, max_new_tokens=1)
        assert int(combined[row].argmax()) == int(want[0])
    torch.testing.assert_close(combined.exp().sum(-1), torch.ones(2))


@pytest.mark.parametrize("gamma", [0.5, 0.0])  # with and without the base stream before the negatives
@pytest.mark.parametrize("negatives", [CONCAT_NEGATIVES, SEPARATE_NEGATIVES], ids=["concat", "separate"])
def test_an_exempt_eos_is_scored_without_the_negatives(gamma, negatives):
    expert, base = expert_and_base("llama")
    eos = 18  # a token these random models' negatives make a difference to, in each case
    streams = as_streams(negatives)
    processor = SteerLogitsProcessor(expert, base, streams, gamma=gamma, eta=0.8, exempt_token_id=eos)
    ids, mask = left_padded(PROMPTS)
    out = expert.generate(input_ids=ids, attention_mask=mask, logits_processor=LogitsProcessorList([processor]),
                          max_new_tokens=NEW_TOKENS, pad_token_id=PAD, eos_token_id=eos, do_sample=False)  # fmt: skip
    differs = 0
    for row, prompt in enumerate(PROMPTS):
        row_streams = streams[row] if isinstance(streams[row], list) else [streams[row]]
        want, plain = (steer_generate_uncached(expert, base, torch.tensor(prompt), row_streams, gamma=gamma, eta=0.8,
                                               max_new_tokens=NEW_TOKENS, eos_token_id=eos, eos_exempt=exempt)
                       for exempt in (True, False))  # fmt: skip
        got = out[row, ids.shape[1]:].tolist()
        got = got[: got.index(eos) + 1] if eos in got else got
        assert got == want.tolist(), f"row {row}"
        differs += want.tolist() != plain.tolist()
    assert differs >= 1, "the exemption changed nothing here: the test would not see it missing"


@pytest.mark.parametrize("token", [VOCAB, -1, True, 2.0])
def test_a_bad_exempt_token_is_refused(token):
    expert, base = expert_and_base("llama")
    with pytest.raises(ValueError, match="exempt_token_id must be None or a token id"):
        SteerLogitsProcessor(expert, base, as_streams(CONCAT_NEGATIVES), exempt_token_id=token)
