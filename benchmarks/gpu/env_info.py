"""The environment record of a GPU check, as one JSON object (run.sh's first step).

    python benchmarks/gpu/env_info.py OUT.json [--jsonl RUN.jsonl] [--commit SHA] [--dry-run]

Everything is best effort: a probe that fails leaves its field null or records its error, so
this step only fails when it cannot write OUT.json at all. The commit comes from, in order:
--commit / STEER_COMMIT, `git rev-parse HEAD` (with the count of uncommitted changes), the file
benchmarks/gpu/COMMIT (a copy of the tree without .git: write it before sending the tree), else
'unknown'. source_sha256 digests every source file of the package (python/, steer_kernels/,
csrc/, CMakeLists.txt, setup.py), so results from a tree without .git can still be matched to code.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE_SUFFIXES = {".py", ".cpp", ".cu", ".cuh", ".h", ".txt", ".map"}


def run(command: list[str], timeout: float = 20) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def commit(explicit: str | None) -> dict:
    if explicit:
        return {"commit": explicit, "commit_source": "given"}
    head = run(["git", "rev-parse", "HEAD"])
    if head:
        status = run(["git", "status", "--porcelain", "--untracked-files=no"]) or ""
        return {"commit": head, "commit_source": "git", "uncommitted_changes": len(status.splitlines())}
    file = ROOT / "benchmarks" / "gpu" / "COMMIT"
    if file.exists():
        text = file.read_text().split()
        if text:
            return {"commit": text[0], "commit_source": "benchmarks/gpu/COMMIT"}
    return {"commit": "unknown", "commit_source": "none"}


def source_digest() -> str:
    digest = hashlib.sha256()
    files = [ROOT / "CMakeLists.txt", ROOT / "setup.py", ROOT / "pyproject.toml"]
    for folder in ("python/steer", "steer_kernels", "csrc"):
        files += sorted(p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES
                        and "__pycache__" not in p.parts)
    for path in files:
        if path.exists():
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def version(module: str) -> str | None:
    try:
        from importlib.metadata import version as dist_version

        return dist_version(module)
    except Exception:  # noqa: BLE001
        return None


def nvidia_smi() -> dict:
    info: dict = {}
    query = run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,"
                 "power.limit,pstate,temperature.gpu,utilization.gpu", "--format=csv,noheader"])
    if query:
        fields = [f.strip() for f in query.splitlines()[0].split(",")]
        keys = ["gpu_name", "driver", "memory_total", "sm_clock_max", "mem_clock_max", "power_limit", "pstate",
                "temperature_c", "utilization"]
        info.update(dict(zip(keys, fields)))
        info["gpu_count"] = len(query.splitlines())
    header = run(["nvidia-smi"])
    if header:
        match = re.search(r"CUDA Version:\s*([\d.]+)", header)
        if match:
            info["driver_cuda"] = match.group(1)
    return info


def torch_info() -> dict:
    info: dict = {}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["torch_device"] = props.name
            info["compute_capability"] = f"{props.major}.{props.minor}"
            info["multiprocessors"] = props.multi_processor_count
            info["memory_gib"] = round(props.total_memory / 2**30, 1)
            l2 = getattr(props, "L2_cache_size", None)
            info["l2_mib"] = round(l2 / 2**20, 1) if l2 else None
    except Exception as error:  # noqa: BLE001
        info["torch_error"] = f"{type(error).__name__}: {error}"
    return info


def nvcc_version() -> str | None:
    text = run(["nvcc", "--version"])
    match = re.search(r"release ([\d.]+)", text or "")
    return match.group(1) if match else None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--commit", default=os.environ.get("STEER_COMMIT") or None)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--jsonl", type=Path, default=None, help="also append the record here, as kind 'env'")
    args = parser.parse_args()
    include = sysconfig.get_paths().get("include") or ""
    record = {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "dry_run": args.dry_run,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "python_h": os.path.exists(os.path.join(include, "Python.h")),
        "platform": platform.platform(),
        **commit(args.commit),
        "source_sha256": source_digest(),
        **nvidia_smi(),
        "nvcc": nvcc_version(),
        "cmake": (run(["cmake", "--version"]) or "").split("\n")[0].replace("cmake version ", "") or None,
        "ninja": run(["ninja", "--version"]),
        "cxx": (run([shutil.which("c++") or "c++", "--version"]) or "").split("\n")[0] or None,
        **torch_info(),
        "triton": version("triton"),
        "transformers": version("transformers"),
        "peft": version("peft"),
        "pytest_xdist": version("pytest-xdist"),
        "env": {k: os.environ[k] for k in ("TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES", "STEER_PEAK_GBPS",
                                           "STEER_PEAK_TFLOPS", "MAX_JOBS") if k in os.environ},
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    if args.jsonl is not None:
        with open(args.jsonl, "a") as handle:
            handle.write(json.dumps({"kind": "env", **record}) + "\n")
    for key in ("date_utc", "gpu_name", "driver", "driver_cuda", "nvcc", "torch", "torch_cuda", "triton", "commit",
                "python", "python_h"):
        print(f"{key:12s} {record.get(key)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
