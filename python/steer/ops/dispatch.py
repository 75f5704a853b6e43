"""Which implementation runs an op: the backends known to steer, their availability, ``auto``."""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

# Fastest first: ``backend="auto"`` takes the first one that is available, implements the op and
# runs on the tensor's device. Each module provides is_available(), DEVICE_TYPES and the ops it has.
BACKEND_MODULES = {
    "cuda": "steer.ops.cuda_backend",
    "cpp": "steer.ops.cpp_backend",
    "torch": "steer.ops.torch_backend",
}
OPS = ("combine", "sample")


def _load(name: str) -> ModuleType | None:
    try:
        module = importlib.import_module(BACKEND_MODULES[name])
    except ImportError:
        return None
    return module if module.is_available() else None


def backends(op: str | None = None) -> list[str]:
    """Names of the backends usable on this machine, fastest first.

    With ``op`` ("combine" or "sample"), those that implement that op; without, those that
    implement every op.
    """
    if op is not None and op not in OPS:
        raise ValueError(f"unknown op {op!r}; ops are {OPS}")
    wanted = OPS if op is None else (op,)
    usable = []
    for name in BACKEND_MODULES:
        module = _load(name)
        if module is not None and all(hasattr(module, o) for o in wanted):
            usable.append(name)
    return usable


def resolve(backend: str, op: str, device: torch.device) -> ModuleType:
    """The backend module that runs ``op`` on ``device``; a clear error if the named one can't."""
    if backend == "auto":
        for name in BACKEND_MODULES:
            module = _load(name)
            if module is not None and hasattr(module, op) and device.type in module.DEVICE_TYPES:
                return module
        raise RuntimeError(f"no steer backend can run {op} on {device}")  # torch always can: a bug
    if backend not in BACKEND_MODULES:
        raise ValueError(f"unknown backend {backend!r}; choose 'auto' or one of {list(BACKEND_MODULES)}")
    module = _load(backend)
    if module is None:
        raise ValueError(f"backend {backend!r} is not available on this machine; available: {backends(op)}")
    if not hasattr(module, op):
        raise ValueError(f"backend {backend!r} does not implement {op} yet; backends that do: {backends(op)}")
    if device.type not in module.DEVICE_TYPES:
        raise ValueError(f"backend {backend!r} runs on {module.DEVICE_TYPES} tensors, got a tensor on {device}")
    return module
