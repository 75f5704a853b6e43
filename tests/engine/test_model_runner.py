"""The paged forward against the Hugging Face forward of the same weights."""

import pytest
import torch
from tiny_models import BUILDERS

from steer.engine.block_manager import BlockManager
from steer.engine.model_runner import PagedKVCache, StepBatch, runner_for

BLOCK = 4


def hf_last_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0, -1].float()


def append_one_token(manager, tables, streams, step):
    """A decode step's rows: one made-up token appended to every stream."""
    rows = []
    for row, (table, stream) in enumerate(zip(tables, streams)):
        stream.append(30 + step + row)
        manager.append(table, stream)
        rows.append((table.block_ids, stream, 1))
    return rows


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_prefill_then_decode_matches_hf_for_rows_of_different_lengths(arch):
    model = BUILDERS[arch](seed=3)
    runner = runner_for(model)
    manager = BlockManager(num_blocks=64, block_size=BLOCK)
    cache = PagedKVCache(runner.kv_shape, 64, BLOCK, dtype=torch.float64, device="cpu")
    streams = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [20, 21, 22, 23, 24]]
    tables = [manager.allocate("expert", s) for s in streams]
    batch = StepBatch.build([(t.block_ids, s, len(s)) for t, s in zip(tables, streams)], BLOCK, "cpu")
    logits = runner.forward(cache, batch)
    for row, stream in enumerate(streams):
        torch.testing.assert_close(logits[row], hf_last_logits(model, stream), rtol=1e-9, atol=1e-9)
    for step in range(6):
        rows = append_one_token(manager, tables, streams, step)
        logits = runner.forward(cache, StepBatch.build(rows, BLOCK, "cpu"))
        for row, stream in enumerate(streams):
            torch.testing.assert_close(logits[row], hf_last_logits(model, stream), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_cached_prefix_is_not_recomputed(arch):
    model = BUILDERS[arch](seed=4)
    runner = runner_for(model)
    manager = BlockManager(num_blocks=64, block_size=BLOCK)
    cache = PagedKVCache(runner.kv_shape, 64, BLOCK, dtype=torch.float64, device="cpu")
    prompt = list(range(3, 14))
    first = manager.allocate("expert", prompt)
    runner.forward(cache, StepBatch.build([(first.block_ids, prompt, len(prompt))], BLOCK, "cpu"))
    second_tokens = prompt + [40, 41]
    second = manager.allocate("expert", second_tokens)
    assert second.num_cached_tokens == 8
    new = len(second_tokens) - second.num_cached_tokens
    logits = runner.forward(cache, StepBatch.build([(second.block_ids, second_tokens, new)], BLOCK, "cpu"))
    torch.testing.assert_close(logits[0], hf_last_logits(model, second_tokens), rtol=1e-9, atol=1e-9)


def test_unsupported_architecture_is_named():
    class Fake:
        config = type("Config", (), {"model_type": "mamba"})()

    with pytest.raises(ValueError, match="model_type='mamba'"):
        runner_for(Fake())


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_decode_steps_with_the_triton_kernel_match_the_gather_path(arch):
    """The GPU decode path (steer_kernels.paged_attention; here under Triton's interpreter) gives
    the logits of the SDPA gather path."""
    pytest.importorskip("triton")
    from steer.ops import triton_backend

    if not (torch.cuda.is_available() or triton_backend.is_interpreted()):
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = BUILDERS[arch](seed=3).to(device=device, dtype=torch.float32)
    runner = runner_for(model)
    manager = BlockManager(num_blocks=64, block_size=BLOCK)
    cache = PagedKVCache(runner.kv_shape, 64, BLOCK, dtype=torch.float32, device=device)
    streams = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [20, 21, 22, 23, 24]]
    tables = [manager.allocate("expert", s) for s in streams]
    runner.forward(cache, StepBatch.build([(t.block_ids, s, len(s)) for t, s in zip(tables, streams)], BLOCK, device))
    for step in range(3):
        rows = append_one_token(manager, tables, streams, step)
        kernel_batch = StepBatch.build(rows, BLOCK, device, decode_kernel=True)
        assert kernel_batch.decode_kernel
        with_kernel = runner.forward(cache, kernel_batch)
        with_gather = runner.forward(cache, StepBatch.build(rows, BLOCK, device))
        torch.testing.assert_close(with_kernel, with_gather, rtol=1e-4, atol=1e-4)
