"""Session-wide test setup.

Triton decides at decoration time whether a ``@triton.jit`` kernel is compiled or interpreted:
TRITON_INTERPRET=1 must be in the environment before ``steer_kernels`` is first imported, by
whichever test module gets there first. Without a GPU, switch the interpreter on here, at session
start, so the Triton kernels run on CPU tensors (tests/ops/test_triton.py). With a GPU nothing
changes and the kernels compile for it.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
