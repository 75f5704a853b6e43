"""Run an op on the device its backend needs (GPU backends take CUDA tensors) and bring the
result back to the CPU, so one test body serves every backend."""

from __future__ import annotations

import torch

GPU_BACKENDS = ("cuda", "triton")


def device_for(backend: str) -> str:
    return "cuda" if backend in GPU_BACKENDS and torch.cuda.is_available() else "cpu"


def run(op, *args, backend: str, **kwargs):
    device = device_for(backend)

    def move(value):
        return value.to(device) if isinstance(value, torch.Tensor) else value

    out = op(*map(move, args), backend=backend, **{name: move(value) for name, value in kwargs.items()})
    return tuple(o.cpu() for o in out) if isinstance(out, tuple) else out.cpu()
