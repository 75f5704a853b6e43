"""Triton kernels of the fused STEER sampler (design: README.md in this folder).

One file per op, Liger style: kernel (maths in a comment on top), launcher, thin wrapper.

    combine.py   combine / launch_combine   the combined scores [B, V] of [B, K, V] logits
    sample.py    sample / launch_sample     one token and its log-probability per row
    streams.py   reading the K streams once: -inf rules, padding, plausibility, error buffer
    select.py    top-k / top-p without sorting: packed keys, candidate lists, exact search
    philox.py    the shared counter-based noise (Philox4x32-10, Gumbel)

The wrappers take validated inputs (``steer.ops`` validates) and raise the shared ValueErrors;
the launchers write into caller-provided buffers without any host synchronisation, for CUDA
graphs. Set TRITON_INTERPRET=1 before importing this package to run the kernels on the CPU.

(``steer_kernels.combine`` and ``steer_kernels.sample`` are the ops; their modules are
``importlib.import_module("steer_kernels.sample")`` etc.)
"""

from steer_kernels.combine import combine, launch_combine
from steer_kernels.sample import launch_sample, sample
from steer_kernels.streams import new_error_buffer, raise_for_errors

__all__ = ["combine", "launch_combine", "launch_sample", "new_error_buffer", "raise_for_errors", "sample"]
