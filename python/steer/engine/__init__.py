"""The STEER engine: batched multi-model decoding over one paged KV cache.

One decode step, file by file:
    scheduler.py      picks the sample groups that run this step, within the KV budget
    block_manager.py  gives every stream its KV blocks; identical prefixes share blocks
    model_runner.py   one batched forward per model over every active stream (one in all for
                      a LoRA expert); projection.py reads the weights and adapters,
                      decode_linear.py runs them (each weight read once for all rows on the CPU)
    steer.ops.sample  the fused STEER sampler over the [B, K, V] logits
    sequence.py       the token is appended to all K streams of its group
    pool.py           finished samples join the pool that new samples draw negatives from
    engine.py         SteerEngine: the loop over steps, generate() and run()
"""

from steer.engine.engine import Result, SteerEngine
from steer.engine.pool import NegativePool
from steer.engine.sequence import Request

__all__ = ["NegativePool", "Request", "Result", "SteerEngine"]
