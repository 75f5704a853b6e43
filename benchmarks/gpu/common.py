"""What the scripts of benchmarks/gpu/ share: the dry-run switch, the device, timers, the peak
table and the JSON-lines records that report.py turns into the results file.

Dry run (``--dry-run`` or STEER_GPU_CHECK_DRY_RUN=1): the same code on the CPU under Triton's
interpreter (run.sh exports TRITON_INTERPRET=1 before anything imports steer_kernels), with tiny
shapes and one or two cases, so that benchmarks/gpu/run.sh cannot rot on a machine without a GPU.
Its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
for extra in (ROOT / "benchmarks", ROOT / "tests"):  # eager.py, tiny_models.py
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import torch

# HBM bandwidth and dense bf16 tensor rate by the vendors' datasheets, matched against the device
# name, most specific first. KINDS.md measured ~4.3 TB/s device-to-device copy (read + write) and
# ~790 TFLOP/s bf16 on an H200 here: the scripts measure the copy bandwidth too and report both.
DATASHEET = [
    ("GH200", 4000.0, 989.0),  # before H200, which its name contains (HBM3 version; HBM3e: 4900)
    ("H200", 4800.0, 989.0),
    ("H100 NVL", 3900.0, 835.0),
    ("H100 PCIe", 2000.0, 756.0),
    ("H100", 3350.0, 989.0),  # SXM: 'NVIDIA H100 80GB HBM3'
    ("H800", 3350.0, 989.0),
    ("A100-SXM4-80GB", 2039.0, 312.0),
    ("A100 80GB PCIe", 1935.0, 312.0),
    ("A100", 1555.0, 312.0),
    ("L40S", 864.0, 362.0),
    ("L4", 300.0, 121.0),
    ("A10G", 600.0, 125.0),
]


def parse_args(description: str, extra=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--jsonl", type=Path, default=None, help="append machine-readable records here")
    parser.add_argument("--dry-run", action="store_true", default=os.environ.get("STEER_GPU_CHECK_DRY_RUN") == "1",
                        help="tiny shapes on the CPU under TRITON_INTERPRET=1 (default from STEER_GPU_CHECK_DRY_RUN)")
    parser.add_argument("--budget-s", type=float, default=float(os.environ.get("STEER_GPU_CHECK_BUDGET_S", "0") or 0),
                        help="stop starting new cases after this many seconds (0: no limit); "
                             "run.sh passes its remaining time")
    if extra:
        extra(parser)
    args = parser.parse_args()
    if args.dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        os.environ["TRITON_INTERPRET"] = "1"  # before any steer_kernels import
    if not args.dry_run and os.environ.get("TRITON_INTERPRET"):
        raise SystemExit("TRITON_INTERPRET is set: the GPU check must run the compiled kernels (unset it)")
    return args


def device(args) -> torch.device:
    if args.dry_run:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch (use --dry-run on a machine without a GPU)")
    return torch.device("cuda")


def device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (dry run)"


def datasheet(name: str) -> tuple[float | None, float | None]:
    """(GB/s, dense bf16 TFLOP/s) of the device by its name, or (None, None) when unknown.
    STEER_PEAK_GBPS / STEER_PEAK_TFLOPS override."""
    gbps = tflops = None
    for key, bandwidth, rate in DATASHEET:
        if key.lower() in name.lower():
            gbps, tflops = bandwidth, rate
            break
    if os.environ.get("STEER_PEAK_GBPS"):
        gbps = float(os.environ["STEER_PEAK_GBPS"])
    if os.environ.get("STEER_PEAK_TFLOPS"):
        tflops = float(os.environ["STEER_PEAK_TFLOPS"])
    return gbps, tflops


class Records:
    """Append-only JSON lines: one dict per measurement, tagged with the script's kind."""

    def __init__(self, path: Path | None, kind: str):
        self.path, self.kind = path, kind

    def emit(self, **fields) -> None:
        record = {"kind": self.kind, **{k: _plain(v) for k, v in fields.items()}}
        if self.path is not None:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")


def _plain(value):
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def note(text: str) -> None:
    """A line for the step's row in the results file (run.sh points STEER_GPU_CHECK_NOTE at it)."""
    path = os.environ.get("STEER_GPU_CHECK_NOTE")
    print(f"# note: {text}", flush=True)
    if path:
        with open(path, "a") as handle:
            handle.write(("; " if os.path.exists(path) and os.path.getsize(path) else "") + text)


class Budget:
    """Wall-clock budget of a script: ``left()`` seconds, ``over()`` once they are spent."""

    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return math.inf if not self.seconds else self.seconds - self.elapsed()

    def over(self, reserve: float = 0.0) -> bool:
        return self.left() <= reserve


def batch_out_of_budget(budget: Budget, records: Records, batch: int) -> bool:
    """True, with the note and the error record, when the budget leaves no time for ``batch``."""
    if not budget.over(reserve=5):
        return False
    note(f"budget spent: batch {batch} not run")
    records.emit(batch=batch, error="not run: budget spent")
    return True


_FLUSH: dict = {}


def flush_l2(dev: torch.device) -> None:
    """Overwrite more than the L2 (50 MB on an H100, 60 MB on an H200), so inputs come from HBM."""
    if dev.type != "cuda":
        return
    if dev not in _FLUSH:
        _FLUSH[dev] = torch.empty(256 * 2**20, dtype=torch.int8, device=dev)
    _FLUSH[dev].zero_()


def median_ms(fn, dev: torch.device, *, reps: int = 20, warmup: int = 2, flush: bool = True) -> float:
    """Median milliseconds of fn(): CUDA events around each call after warm-up, the L2 flushed
    before each (outside the timed region); on the CPU (dry run), perf_counter."""
    if dev.type != "cuda":
        warmup = min(warmup, 1)  # the dry run: only that it runs matters
    for _ in range(warmup):
        fn()
    if dev.type != "cuda":
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize(dev)
    times = []
    for _ in range(reps):
        if flush:
            flush_l2(dev)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_gbps(dev: torch.device, nbytes: int = 2**30, reps: int = 20) -> float | None:
    """Bytes read + written per second by a large device-to-device copy: the practical peak."""
    if dev.type != "cuda":
        return None
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev).random_()
    dst = torch.empty_like(src)
    ms = median_ms(functools.partial(dst.copy_, src), dev, reps=reps, warmup=3, flush=False)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / (ms / 1e3) / 1e9


def fmt(value, spec: str = ".3f", missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value, spec)
