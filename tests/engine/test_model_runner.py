"""The paged forward of each model family against the Hugging Face forward of the same weights."""

import pytest
import torch
from tiny_models import BUILDERS

from steer.engine.attention import PagedAttention
from steer.engine.block_manager import BlockManager
from steer.engine.kv_cache import PagedKVCache
from steer.engine.models import runner_for
from steer.engine.sequence import Stream, StreamRole
from steer.engine.step_batch import StepBatch

BLOCK = 4


def hf_last_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0, -1].float()


def new_stream(manager, tokens, namespace="expert"):
    stream = Stream(StreamRole.PROMPT, namespace, list(tokens), len(tokens))
    stream.table = manager.allocate(namespace, stream.tokens)
    stream.num_computed = min(stream.table.num_cached_tokens, len(tokens) - 1)
    return stream


def forward(runner, attention, streams, device="cpu"):
    """Logits [R, V] after each stream's last token; marks every stream's KV computed."""
    batch = StepBatch.build(streams, BLOCK, device)
    logits = runner.lm_head(runner.last_hidden(attention, batch)).float()
    for stream in streams:
        stream.num_computed = len(stream.tokens)
    return logits


def append_one_token(manager, streams, step):
    """A decode step: one made-up token appended to every stream."""
    for row, stream in enumerate(streams):
        stream.tokens.append(30 + step + row)
        manager.append(stream.table, stream.tokens)


def setup(arch, seed, device="cpu", dtype=torch.float64, backend="auto"):
    model = BUILDERS[arch](seed=seed).to(device=device, dtype=dtype)
    runner = runner_for(model)
    manager = BlockManager(num_blocks=64, block_size=BLOCK)
    cache = PagedKVCache(runner.kv_shape, 64, BLOCK, dtype=dtype, device=device)
    return model, runner, manager, PagedAttention(cache, backend)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_prefill_then_decode_matches_hf_for_rows_of_different_lengths(arch):
    model, runner, manager, attention = setup(arch, 3)
    streams = [new_stream(manager, s) for s in ([5, 6, 7, 8, 9, 10, 11], [12, 13], [20, 21, 22, 23, 24])]
    logits = forward(runner, attention, streams)
    for row, stream in enumerate(streams):
        torch.testing.assert_close(logits[row], hf_last_logits(model, stream.tokens), rtol=1e-9, atol=1e-9)
    for step in range(6):
        append_one_token(manager, streams, step)
        logits = forward(runner, attention, streams)
        for row, stream in enumerate(streams):
            torch.testing.assert_close(logits[row], hf_last_logits(model, stream.tokens), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_cached_prefix_is_not_recomputed(arch):
    model, runner, manager, attention = setup(arch, 4)
    prompt = list(range(3, 14))
    forward(runner, attention, [new_stream(manager, prompt)])
    second = new_stream(manager, prompt + [40, 41])
    assert second.table.num_cached_tokens == 8 and second.num_new == 5
    logits = forward(runner, attention, [second])
    torch.testing.assert_close(logits[0], hf_last_logits(model, second.tokens), rtol=1e-9, atol=1e-9)


def test_a_mixed_step_of_decode_prefill_and_prefix_hit_rows_matches_hf():
    model, runner, manager, attention = setup("llama", 5)
    first = new_stream(manager, list(range(3, 14)))
    forward(runner, attention, [first])
    append_one_token(manager, [first], 0)  # decode row
    hit = new_stream(manager, list(range(3, 14)) + [50, 51, 52])  # 8 cached, 6 new
    fresh = new_stream(manager, [60, 61, 62, 63, 64, 65, 66, 67, 68])  # prefill row
    streams = [first, hit, fresh]
    assert [s.num_new for s in streams] == [1, 6, 9]
    logits = forward(runner, attention, streams)
    for row, stream in enumerate(streams):
        torch.testing.assert_close(logits[row], hf_last_logits(model, stream.tokens), rtol=1e-9, atol=1e-9)


def test_unsupported_architecture_is_named():
    class Fake:
        config = type("Config", (), {"model_type": "mamba"})()

    with pytest.raises(ValueError, match="model_type='mamba'"):
        runner_for(Fake())


@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_every_attention_backend_gives_the_reference_logits(arch, backend):
    """The kernels (C++ on the CPU; Triton on a GPU or under its interpreter) against the torch
    reference, for a prefill step and decode steps, in float32."""
    from steer.ops import attention as ops_attention, triton_backend

    if backend == "triton":
        pytest.importorskip("triton")
        if not (torch.cuda.is_available() or triton_backend.is_interpreted()):
            pytest.skip("needs a GPU or TRITON_INTERPRET=1")
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = "cpu"
        if ops_attention.resolve_backend("auto", torch.device("cpu"), torch.float32) != "cpp":
            pytest.skip("steer._C has no paged_attention (a source tree that was not rebuilt)")
    results = {}
    for name in (backend, "torch"):
        model, runner, manager, attention = setup(arch, 3, device=device, dtype=torch.float32, backend=name)
        streams = [new_stream(manager, s) for s in ([5, 6, 7, 8, 9, 10, 11], [12, 13], [20, 21, 22, 23, 24])]
        steps = [forward(runner, attention, streams, device)]
        for step in range(3):
            append_one_token(manager, streams, step)
            steps.append(forward(runner, attention, streams, device))
        results[name] = torch.stack(steps)
    torch.testing.assert_close(results[backend], results["torch"], rtol=1e-4, atol=1e-4)
