"""STEER with the Hugging Face drop-in, on tiny random models (no downloads, a few seconds on a CPU).

    python examples/quickstart.py

Builds a random 'expert' and 'base' Llama, generates for a left-padded batch with
SteerLogitsProcessor in both negative-prompt modes, and checks every row against the uncached
formula. Until `steer demo` ships trained models, this is the package's smoke test of a real run.
"""

import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList

import steer
from steer.hf.uncached import steer_generate_uncached


def tiny_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.2,
    )
    return LlamaForCausalLM(config).double().eval()


def main() -> None:
    expert, base = tiny_llama(seed=1), tiny_llama(seed=2)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    width = max(map(len, prompts))
    input_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    attention_mask = (torch.arange(width) >= torch.tensor([width - len(p) for p in prompts]).unsqueeze(1)).long()
    negatives = {
        "concat": [torch.tensor([20, 21, 22, 23]), torch.tensor([30, 31]), torch.tensor([40])],
        "separate": [[torch.tensor([20, 21]), torch.tensor([22, 23])], [torch.tensor([30, 31])], [torch.tensor([40]), torch.tensor([41])]],
    }
    print(f"steer {steer.__version__}; backends here: {steer.backends()} (combine: {steer.backends('combine')})")
    for mode, negative_input_ids in negatives.items():
        processor = steer.SteerLogitsProcessor(expert, base, negative_input_ids, gamma=0.5, eta=0.5)
        start = time.perf_counter()
        output = expert.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=16, do_sample=False,
            pad_token_id=0, logits_processor=LogitsProcessorList([processor]),
        )
        seconds = time.perf_counter() - start
        print(f"\n{mode} negatives: {len(prompts)} rows x 16 tokens in {seconds:.2f} s")
        for row, prompt in enumerate(prompts):
            streams = negative_input_ids[row] if isinstance(negative_input_ids[row], list) else [negative_input_ids[row]]
            want = steer_generate_uncached(
                expert, base, torch.tensor(prompt), streams, gamma=0.5, eta=0.5, max_new_tokens=16, eos_token_id=2
            )
            got = output[row, width : width + len(want)]
            print(f"  row {row}: {got.tolist()}  matches the formula: {torch.equal(got, want)}")
            assert torch.equal(got, want), "the drop-in disagrees with the formula"

    logits = torch.randn(4, 3, 1000)
    weights = steer.steer_weights(gamma=0.2, eta=0.2, num_negative_streams=1)
    tokens = steer.sample(logits, weights, top_k=10, seed=0)
    print(f"\nsteer.sample on random [4, 3, 1000] logits with top_k=10: {tokens.tolist()}")


if __name__ == "__main__":
    main()
