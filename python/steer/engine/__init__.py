"""The STEER engine: batched multi-model decoding over one paged KV cache.

One decode step, file by file:
    scheduler.py      picks the sample groups that run this step, within the KV budget
    block_manager.py  gives every stream its KV blocks; identical prefixes share blocks
    model_runner.py   one batched forward per model over every active stream
    steer.ops.sample  the fused STEER sampler over the [B, K, V] logits
    sequence.py       the token is appended to all K streams of its group
"""
