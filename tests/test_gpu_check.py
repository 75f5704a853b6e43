"""benchmarks/gpu/run.sh, the one-command GPU check, must not rot between the rare sessions that
have a GPU: its dry run (the same steps on the CPU, Triton under its interpreter, tiny shapes)
runs here and must write a results file that names every step with a status."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu" / "run.sh"
STEPS = ["env", "build", "tests_gpu", "tests_cuda", "exactness", "sampler", "attention", "engine", "share"]

pytest.importorskip("triton")
if shutil.which("bash") is None or shutil.which("timeout") is None:
    pytest.skip("run.sh needs bash and coreutils' timeout", allow_module_level=True)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "STEER_GPU_CHECK"))}
    env.pop("TRITON_INTERPRET", None)  # run.sh sets it for the dry run itself
    env["PYTHON"] = sys.executable
    env["TMPDIR"] = str(out)
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    return result, out


def test_dry_run_passes_and_writes_one_results_file(dry_run):
    result, out = dry_run
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    md = sorted(out.glob("*.md"))
    assert len(md) == 1, sorted(p.name for p in out.iterdir())
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}-cpu-dryrun-[A-Za-z0-9]+\.md", md[0].name)
    assert md[0].with_suffix(".log").exists() and md[0].with_suffix(".jsonl").exists()
    assert "verdict: all 9 steps ok" in result.stdout


def test_every_step_is_named_with_a_status(dry_run):
    _, out = dry_run
    text = next(out.glob("*.md")).read_text()
    assert "**Verdict: all 9 steps ok" in text
    for step in STEPS:
        row = re.search(rf"^\| {step} \| [^|]* \| ([^|]+) \|", text, flags=re.MULTILINE)
        assert row, f"no row for step {step} in the results file"
        status = row.group(1).strip()
        if step == "tests_cuda":
            assert status == "skipped (dry run)"
        else:
            assert status == "ok", f"{step}: {status}"


def test_the_records_hold_every_section(dry_run):
    _, out = dry_run
    records = [json.loads(line) for line in next(out.glob("*.jsonl")).read_text().splitlines()]
    kinds = {r["kind"] for r in records}
    assert {"env", "step", "exactness", "sampler", "attention", "engine", "share"} <= kinds
    assert [r["step"] for r in records if r["kind"] == "step"] == STEPS
    assert all(r["status"] == "exact" for r in records if r["kind"] == "exactness" and "case" in r)
    assert all(r.get("correct") for r in records if r["kind"] == "attention" and "case" in r)
    engine = [r for r in records if r["kind"] == "engine" and "batch" in r]
    assert engine and all(r.get("steer_over_single_time") for r in engine)
    share = [r for r in records if r["kind"] == "share" and "batch" in r]
    assert share and all(r.get("k1_over_k16") and r.get("k16_over_plain") and r.get("k1_over_per_example") for r in share)
    assert all(r["negative_cache_hit"]["K=16"] > r["negative_cache_hit"]["K=1"] for r in share)
    for record in share:  # where each contender's time went, by kind of step (the CPU has no graphs)
        assert set(record["steps"]) == {"plain", "K=1", "K=16", "per-example K=1"}
        assert all(set(kinds) <= {"prefill", "decode"} and kinds["decode"]["steps"] > 0 for kinds in record["steps"].values())
        assert record["steps"]["K=1"]["prefill"]["tokens"] > record["steps"]["K=16"]["prefill"]["tokens"]
