"""Which implementation runs an op: the backends known to steer, their availability, ``auto``."""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

# Each module provides is_available() (runs natively on this machine), DEVICE_TYPES (the tensor
# devices it takes) and the ops it implements. A module may also provide is_interpreted(): usable
# when named explicitly although not available natively (Triton under TRITON_INTERPRET=1, for
# tests), never chosen by "auto" and not listed by backends().
BACKEND_MODULES = {
    "cuda": "steer.ops.cuda_backend",
    "triton": "steer.ops.triton_backend",
    "cpp": "steer.ops.cpp_backend",
    "torch": "steer.ops.torch_backend",
}
OPS = ("combine", "sample")


def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(BACKEND_MODULES[name])
    except ImportError:
        return None


def _load(name: str) -> ModuleType | None:
    """The backend module if it runs natively here."""
    module = _import(name)
    return module if module is not None and module.is_available() else None


def _load_explicit(name: str) -> ModuleType | None:
    """The backend module if it can run at all here, natively or interpreted."""
    module = _import(name)
    if module is None:
        return None
    interpreted = getattr(module, "is_interpreted", lambda: False)
    return module if module.is_available() or interpreted() else None


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
    module = _load_explicit(backend)
    if module is None:
        raise ValueError(f"backend {backend!r} is not available on this machine; available: {backends(op)}")
    if not hasattr(module, op):
        raise ValueError(f"backend {backend!r} does not implement {op} yet; backends that do: {backends(op)}")
    if device.type not in module.DEVICE_TYPES:
        raise ValueError(f"backend {backend!r} runs on {module.DEVICE_TYPES} tensors, got a tensor on {device}")
    return module


def resolve_name(backend: str, op: str, device: torch.device) -> str:
    """The name of the backend ``resolve`` picks, for a caller that resolves once and then names
    it on every call (an engine)."""
    module = resolve(backend, op, device)
    return next(name for name, path in BACKEND_MODULES.items() if path == module.__name__)
