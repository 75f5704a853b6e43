"""The C ABI (csrc/include/steer/steer.h, libsteer) as a C user gets it: a plain CMake build of the
library and of examples/c/sample_logits.c in a temporary directory, the example run by ctest, the
library's exported symbols, and the library called through ctypes against the reference.

CI runs only pytest, so this file is what keeps the C example building and passing there.
Skipped only where there is no CMake or no C compiler at all."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import steer
from steer import reference, steer_weights

ROOT = Path(__file__).resolve().parents[1]


def find_tool(name: str, module: str) -> str | None:
    """`name` from the pip package `module` (cmake, ninja) if importable, else from PATH."""
    try:
        package = __import__(module)
        exe = shutil.which(name, path=package.CMAKE_BIN_DIR if module == "cmake" else package.BIN_DIR)
        if exe:
            return exe
    except (ImportError, AttributeError):
        pass
    return shutil.which(name)


def find_c_compiler() -> str | None:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def run(command: list[str], cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{output}"
    return output


@pytest.fixture(scope="module")
def c_build(tmp_path_factory) -> Path:
    """A Release build of libsteer and the C example, without Python or CUDA."""
    cmake = find_tool("cmake", "cmake")
    if cmake is None:
        pytest.skip("no cmake (pip install cmake, or put one on PATH)")
    if find_c_compiler() is None:
        pytest.skip("no C compiler")
    build = tmp_path_factory.mktemp("c_abi") / "build"
    configure = [
        cmake, "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
        "-DSTEER_BUILD_PYTHON=OFF", "-DSTEER_BUILD_CUDA=OFF", "-DSTEER_BUILD_EXAMPLES=ON",
    ]  # fmt: skip
    ninja = find_tool("ninja", "ninja")
    if ninja:
        configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    run(configure, ROOT)
    run([cmake, "--build", str(build), "--parallel", "2"], ROOT)
    return build


def ctest_path() -> str:
    cmake = find_tool("cmake", "cmake")
    sibling = Path(cmake).with_name("ctest")
    return str(sibling) if sibling.exists() else (shutil.which("ctest") or "ctest")


def test_c_example_passes_under_ctest(c_build):
    output = run([ctest_path(), "--output-on-failure"], c_build)
    assert "100% tests passed" in output and "c_sample_logits" in output


def library_path(build: Path) -> Path:
    names = {"linux": "libsteer.so", "darwin": "libsteer.dylib", "win32": "steer.dll"}
    matches = sorted(build.rglob(names.get(sys.platform, "libsteer.so")))
    assert matches, f"no libsteer in {build}"
    return matches[0]


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("nm") is None, reason="needs ELF and nm")
def test_libsteer_exports_only_the_c_abi(c_build):
    symbols = run(["nm", "-D", "--defined-only", str(library_path(c_build))], c_build)
    names = {line.split()[-1] for line in symbols.splitlines() if line.strip()}
    assert names == {"steer_combine", "steer_sample", "steer_error_string", "steer_version"}, names


def load_library(build: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(library_path(build)))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.steer_sample.restype = ctypes.c_int
    lib.steer_sample.argtypes = [
        ptr, ctypes.c_int, i64, i64, i64, i64, i64, i64, ptr, i64, i64, ctypes.c_float, ctypes.c_float, i64,
        ctypes.c_float, ptr, ptr, ptr, ptr, ptr, ctypes.c_int, ptr, ptr,
    ]  # fmt: skip
    lib.steer_error_string.restype = ctypes.c_char_p
    return lib


def test_steer_sample_through_ctypes_matches_the_reference(c_build):
    """Strided bfloat16 logits with per-row weights, top-k and top-p, through the raw C ABI."""
    lib = load_library(c_build)
    gen = torch.Generator().manual_seed(0)
    storage = (torch.randn(6, 5000, 4, generator=gen) * 2).to(torch.bfloat16)
    logits = storage.permute(0, 2, 1)  # [B, K, V] with stride_v = K
    weights = torch.as_tensor(steer_weights(0.3, 0.4, 2), dtype=torch.float32).repeat(6, 1)
    weights[3] = torch.as_tensor(steer_weights(0.1, 0.2, 2))
    seeds, keys, steps = torch.arange(6) + 10, torch.arange(6) * 3, torch.full((6,), 2)
    tokens, logprobs = torch.empty(6, dtype=torch.int64), torch.empty(6)
    err_row, err_stream = ctypes.c_int64(0), ctypes.c_int64(0)
    sampler = {"temperature": 0.8, "top_k": 40, "top_p": 0.9}
    status = lib.steer_sample(
        logits.data_ptr(), 2, *logits.shape, *logits.stride(), weights.data_ptr(), weights.stride(0), 4999, 0.0,
        sampler["temperature"], sampler["top_k"], sampler["top_p"], seeds.data_ptr(), keys.data_ptr(),
        steps.data_ptr(), tokens.data_ptr(), logprobs.data_ptr(), 2, ctypes.byref(err_row), ctypes.byref(err_stream),
    )  # fmt: skip
    assert status == 0, lib.steer_error_string(status)
    want_tokens, want_logprobs = reference.sample(
        logits, weights, seeds=seeds, row_keys=keys, steps=steps, vocab_size=4999, **sampler
    )
    assert torch.equal(tokens, want_tokens)
    torch.testing.assert_close(logprobs, want_logprobs, rtol=1e-4, atol=1e-4)
    # The Python cpp backend runs the same kernels.
    assert torch.equal(
        steer.sample(logits, weights, seed=seeds, row_keys=keys, step=2, vocab_size=4999, backend="cpp", **sampler),
        tokens,
    )


@pytest.mark.parametrize("temperature", [1e-6, 1e-30, 2e4, float("inf"), float("nan"), -1.0])
def test_steer_sample_refuses_a_temperature_the_float32_scores_cannot_take(c_build, temperature):
    """The C ABI checks the temperature as steer.config does: 0 or in [1e-5, 1e4] (divided by
    1e-45 the scores overflowed and every draw was token 0)."""
    lib = load_library(c_build)
    logits, weights = torch.randn(2, 2, 64), torch.tensor([1.2, -0.2])
    seeds, keys, steps = torch.arange(2), torch.arange(2), torch.zeros(2, dtype=torch.int64)
    tokens = torch.empty(2, dtype=torch.int64)
    err_row, err_stream = ctypes.c_int64(0), ctypes.c_int64(0)

    def draw(value: float) -> int:
        return lib.steer_sample(
            logits.data_ptr(), 0, *logits.shape, *logits.stride(), weights.data_ptr(), 0, 64, 0.0, value, 0, 1.0,
            seeds.data_ptr(), keys.data_ptr(), steps.data_ptr(), tokens.data_ptr(), None, 1,
            ctypes.byref(err_row), ctypes.byref(err_stream),
        )  # fmt: skip

    assert draw(temperature) == 4, lib.steer_error_string(draw(temperature))  # STEER_ERR_INVALID_ARGUMENT
    for fine in (0.0, 1e-5, 0.7, 1e4):
        assert draw(fine) == 0, (fine, lib.steer_error_string(draw(fine)))
