"""Build steer's compiled extensions with CMake (metadata lives in pyproject.toml).

    pip install .              a wheel-style install
    pip install -e .           editable: the modules are copied next to python/steer/*.py

Extensions:
    steer._C        CPU kernels, always built.
    steer._C_cuda   CUDA kernels, built where CMake finds nvcc and a CUDA toolkit.

Environment:
    STEER_BUILD_CUDA   unset/auto: build _C_cuda if a toolkit is found, and fall back to a CPU-only
                       build if the CUDA part fails; 0: never; 1: required, failures are errors.
    MAX_JOBS           parallel compile jobs (default 2).
    CMAKE_ARGS         extra arguments for the CMake configure step, e.g. "-DSTEER_NATIVE=ON".
    CMAKE_GENERATOR    respected; otherwise Ninja when it is installed.

No torch at build time: the C++ core has no torch dependency and the bindings take raw pointers,
so building never pulls a (CUDA) torch wheel into the build environment.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()
MIN_CMAKE = (3, 18)


class CMakeExtension(Extension):
    """A module built by the CMake target of the same name (steer._C <- target _C)."""

    def __init__(self, name: str, *, required: bool) -> None:
        super().__init__(name, sources=[])
        self.target = name.rpartition(".")[2]
        self.required = required


def cuda_mode() -> str:
    value = os.environ.get("STEER_BUILD_CUDA", "auto").strip().lower()
    modes = {"": "AUTO", "auto": "AUTO", "0": "OFF", "off": "OFF", "false": "OFF", "1": "ON", "on": "ON", "true": "ON"}
    if value not in modes:
        raise SystemExit(f"STEER_BUILD_CUDA must be 0, 1 or auto, got {value!r}")
    return modes[value]


def find_cmake() -> str:
    """The cmake of the `cmake` PyPI package (a declared build requirement) if importable, else PATH's."""
    candidates = []
    try:
        import cmake  # the PyPI wheel; absent in a --no-build-isolation build without it

        candidates.append(shutil.which("cmake", path=cmake.CMAKE_BIN_DIR))
    except (ImportError, AttributeError):
        pass
    candidates.append(shutil.which("cmake"))
    for exe in filter(None, candidates):
        try:
            out = subprocess.run([exe, "--version"], check=True, capture_output=True, text=True).stdout
        except (OSError, subprocess.CalledProcessError):
            continue
        match = re.search(r"version (\d+)\.(\d+)", out)
        if match and tuple(map(int, match.groups())) >= MIN_CMAKE:
            return exe
    raise RuntimeError(f"steer needs CMake >= {'.'.join(map(str, MIN_CMAKE))}: `pip install cmake` or put one on PATH")


def find_ninja() -> str | None:
    try:
        import ninja

        exe = shutil.which("ninja", path=ninja.BIN_DIR)
        if exe:
            return exe
    except (ImportError, AttributeError):
        pass
    return shutil.which("ninja")


def read_cache(build_dir: Path) -> dict[str, str]:
    cache = build_dir / "CMakeCache.txt"
    if not cache.exists():
        return {}
    entries = {}
    for line in cache.read_text(errors="replace").splitlines():
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*):[A-Z]+=(.*)$", line)
        if match:
            entries[match.group(1)] = match.group(2)
    return entries


class CMakeBuild(build_ext):
    """Configure and build every module in one CMake tree, then copy each where setuptools expects it."""

    def run(self) -> None:
        mode = cuda_mode()
        # Not self.build_temp: editable installs point that at a fresh temporary directory, so
        # every `pip install -e .` would recompile everything. build/ persists (and is ignored).
        build_root = ROOT / "build" / f"cmake.{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
        try:
            built = self.cmake_build(build_root / "all", mode)
        except subprocess.CalledProcessError:
            if mode != "AUTO":
                raise
            print(
                "steer: the build with CUDA failed (see above); building the CPU module only. "
                "Set STEER_BUILD_CUDA=0 to skip CUDA, or =1 to make this an error.",
                file=sys.stderr,
            )
            built = self.cmake_build(build_root / "cpu-only", "OFF")
        missing = [e.name for e in self.extensions if e.required and e.target not in built]
        if missing:
            raise RuntimeError(f"CMake did not build {missing}")
        if mode == "ON" and "_C_cuda" not in built:
            raise RuntimeError("STEER_BUILD_CUDA=1 but CMake did not build steer._C_cuda")
        self.cmake_outputs = built
        # Modules CMake skipped (no CUDA toolkit, STEER_BUILD_CUDA=0) are dropped, so setuptools
        # neither copies nor lists them, and a copy an earlier editable build left in the source
        # tree is removed, so it cannot be imported against newer sources.
        for ext in self.extensions:
            if ext.target not in built:
                self.remove_inplace_copy(ext)
        self.extensions = [e for e in self.extensions if e.target in built]
        super().run()

    def remove_inplace_copy(self, ext: CMakeExtension) -> None:
        if not (self.inplace or getattr(self, "editable_mode", False)):
            return
        package_dir = Path(self.get_finalized_command("build_py").get_package_dir(ext.name.rpartition(".")[0]))
        stale = (ROOT / package_dir if not package_dir.is_absolute() else package_dir) / Path(
            self.get_ext_filename(ext.name)
        ).name
        if stale.exists():
            print(f"steer: removing {stale}, left by an earlier build ({ext.name} is not built now)", flush=True)
            stale.unlink()

    def build_extension(self, ext: CMakeExtension) -> None:
        dest = Path(self.get_ext_fullpath(ext.name))
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.copy_file(str(self.cmake_outputs[ext.target]), str(dest))

    def cmake_build(self, build_dir: Path, mode: str) -> dict[str, Path]:
        """Configure + build in build_dir; return {target: built module file} from CMake's manifest."""
        import pybind11

        cmake = find_cmake()
        ninja = None if os.environ.get("CMAKE_GENERATOR") else find_ninja()
        generator = "Ninja" if ninja else os.environ.get("CMAKE_GENERATOR", "")
        pybind11_dir = pybind11.get_cmake_dir()

        # A tree configured by another cmake, generator, Python or pybind11 (each isolated
        # pip build has its own temporary copies) cannot be reused: start it afresh.
        cache = read_cache(build_dir)
        stale = cache and (
            cache.get("CMAKE_COMMAND") != cmake
            or (generator and cache.get("CMAKE_GENERATOR") != generator)
            or cache.get("Python_EXECUTABLE") != sys.executable
            or cache.get("pybind11_DIR") != pybind11_dir
        )
        if stale:
            shutil.rmtree(build_dir)
        build_dir.mkdir(parents=True, exist_ok=True)

        configure = [
            cmake,
            "-S",
            str(ROOT),
            "-B",
            str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11_dir}",
            f"-DSTEER_BUILD_CUDA={mode}",
        ]
        if ninja:
            configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        configure += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        jobs = os.environ.get("MAX_JOBS", "2")
        build = [cmake, "--build", str(build_dir), "--config", "Release", "--parallel", jobs]

        for command in (configure, build):
            print("steer:", shlex.join(command), flush=True)
            subprocess.run(command, check=True, cwd=ROOT)

        manifest = build_dir / "steer_modules.txt"
        built = {}
        for line in manifest.read_text().splitlines():
            target, _, path = line.partition("=")
            if target and Path(path).exists():
                built[target] = Path(path)
        return built


setup(
    ext_modules=[CMakeExtension("steer._C", required=True), CMakeExtension("steer._C_cuda", required=False)],
    cmdclass={"build_ext": CMakeBuild},
)
