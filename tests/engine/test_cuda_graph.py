"""Decode steps from CUDA graphs: the padded static batches everywhere (mode "static"), the
capture itself on a GPU."""

import pytest
import torch
from tiny_models import EOS, expert_and_base, lora_expert_and_base

from steer import SteerConfig
from steer.engine.cuda_graph import buckets_up_to
from steer.engine.engine import SteerEngine
from steer.engine.sequence import Request

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [3, 4, 5, 6, 7, 8, 12, 13, 14], [40], [7, 7, 7]]
NEGATIVES = [[[20, 21, 22, 23]], [[30, 31], [40, 41, 42, 43], [44]], [[50]], [[60, 61], [62]], [[70, 71]]]
NEW = 9


def requests():
    return [Request(p, n, NEW, eos_token_id=EOS) for p, n in zip(PROMPTS, NEGATIVES)]


def test_buckets_cover_every_batch_up_to_the_row_limit():
    assert buckets_up_to(1) == (1,)
    assert buckets_up_to(20) == (1, 2, 4, 8, 16, 20)
    assert buckets_up_to(64) == (1, 2, 4, 8, 16, 24, 32, 48, 64)
    assert buckets_up_to(200) == (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 200)


@pytest.mark.parametrize("kind", ["separate", "lora"])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "mistral", "gemma2", "phi3"])
def test_padded_static_decode_batches_give_the_eager_tokens(arch, kind):
    models = expert_and_base(arch) if kind == "separate" else (lora_expert_and_base(arch)[0],)
    config = SteerConfig(gamma=0.5, eta=0.5, temperature=0.0, max_new_tokens=NEW)
    eager = SteerEngine(*models, config=config, block_size=4, decode_graphs="off").generate(requests())
    static = SteerEngine(*models, config=config, block_size=4, decode_graphs="static", max_batch_rows=20)
    assert static.generate(requests()) == eager
    assert static.blocks.num_free_blocks == static.blocks.num_blocks
    # expert rows: 13 prompt and negative streams (bucket 16), base rows: 5 (bucket 8; LoRA: 18 rows in one pass, bucket 20)
    assert {rows for _, rows in static.runner.decode_graphs._captured} >= ({8, 16} if kind == "separate" else {20})


def test_capture_needs_a_gpu_and_triton_attention():
    expert, base = expert_and_base("llama")
    with pytest.raises(ValueError, match="decode_graphs='capture' needs a CUDA device"):
        SteerEngine(expert, base, decode_graphs="capture")
    with pytest.raises(ValueError, match="decode_graphs must be one of"):
        SteerEngine(expert, base, decode_graphs="sometimes")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["separate", "lora"])
def test_captured_decode_steps_give_the_eager_tokens_on_a_gpu(kind):
    models = expert_and_base("llama") if kind == "separate" else (lora_expert_and_base("llama")[0],)
    models = [m.to(device="cuda", dtype=torch.float32) for m in models]
    config = SteerConfig(gamma=0.5, eta=0.5, temperature=0.0, max_new_tokens=NEW)
    eager = SteerEngine(*models, config=config, block_size=4, decode_graphs="off").generate(requests())
    engine = SteerEngine(*models, config=config, block_size=4, decode_graphs="capture", max_batch_rows=20)
    assert engine.generate(requests()) == eager
    assert engine.generate(requests()) == eager  # replayed, not captured again
    assert engine.runner.decode_graphs._captured, "no decode step was captured"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("graphs", ["off", "capture"])
def test_the_gpu_steps_read_no_kv_slot_they_have_not_written(graphs):
    """The pool is not zeroed when made (tests/engine/test_engine.py holds the CPU to the same):
    a pool full of NaN gives the tokens of a zeroed one, with Triton's attention, prefix hits,
    and the captured graphs' padding rows."""
    models = [m.to(device="cuda", dtype=torch.float32) for m in expert_and_base("llama")]
    config = SteerConfig(gamma=0.5, eta=0.5, temperature=0.0, max_new_tokens=NEW)
    tokens = []
    for fill in (0.0, float("nan")):
        engine = SteerEngine(*models, config=config, block_size=4, decode_graphs=graphs, max_batch_rows=20)
        engine.runner.attention.cache.k.fill_(fill)
        engine.runner.attention.cache.v.fill_(fill)
        tokens.append(engine.generate(requests() * 2))
    assert tokens[1] == tokens[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("graphs", ["off", "capture"])
@pytest.mark.parametrize("eos_exempt", [False, True], ids=["", "eos-exempt"])
def test_a_decode_step_synchronises_with_the_gpu_once(graphs, eos_exempt):
    """After the first steps (prefill, captures), a decode step's only host synchronisation is the
    read-back of its tokens (with the sampler's error buffer): torch's sync debug mode warns on
    every synchronising call. The EOS exemption's fold adds none."""
    import warnings

    models = [m.to(device="cuda", dtype=torch.float32) for m in expert_and_base("llama")]
    config = SteerConfig(gamma=0.5, eta=0.5, temperature=0.7, top_k=20, max_new_tokens=40, seed=1, eos_exempt=eos_exempt)
    engine = SteerEngine(*models, config=config, block_size=4, decode_graphs=graphs, max_batch_rows=20)
    for index, request in enumerate(requests()):
        engine.add_request(Request(request.prompt_ids, request.negative_ids, 40, eos_token_id=2), request_id=index)
    for _ in range(4):  # prefill, then decode steps (captured on first use)
        engine.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            engine.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) == 1, syncs
