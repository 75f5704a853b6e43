"""SIGKILL ``steer generate`` at random points, resume, and check the file: exactly n valid, distinct
records every time, the torn line of a kill mid-write cut off, and the settings unchanged."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from model_dirs import save_expert_and_base

N = 24
REAL = ["hello world", "the cat sat", "foo bar baz", "another one", "fine weather today", "a b c d"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    expert, base = save_expert_and_base(root)
    real = root / "real.txt"
    real.write_text("\n".join(REAL) + "\n")
    return expert, base, real


def command(setup, out):
    expert, base, real = setup
    return [sys.executable, "-m", "steer.cli", "generate", "--expert", str(expert), "--base", str(base), "--real", str(real),
            "--out", str(out), "--n", str(N), "--max-new-tokens", "12", "--batch-size", "3", "--quiet", "--resume"]


def complete_lines(path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def run_until_killed(argv, out, target_lines: int, extra_delay: float) -> int | None:
    """Start the run, SIGKILL it once the file holds ``target_lines`` lines (+ a random delay);
    return its exit code if it finished first, else None."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while process.poll() is None and complete_lines(out) < target_lines and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(extra_delay)
    if process.poll() is not None:
        assert process.returncode == 0, process.stderr.read().decode()
        return 0
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return None


def check_output(out) -> None:
    data = out.read_bytes()
    assert data.endswith(b"\n")
    rows = [json.loads(line) for line in data.decode().splitlines()]
    assert len(rows) == N
    assert sorted(r["id"] for r in rows) == list(range(N))
    assert len({" ".join(r["text"].split()).lower() for r in rows}) == N
    assert len({r["seed"] for r in rows}) == N
    assert all(r["text"].strip() and r["run_seed"] == 0 and r["gamma"] == 0.2 for r in rows)
    for row in rows:
        for label in row["negative_ids"]:
            kind, index = label.split(":")
            assert kind == "real" and int(index) < len(REAL) or kind == "synthetic" and int(index) < N


@pytest.fixture(scope="module")
def unkilled(setup, tmp_path_factory):
    """The records of the same run, never killed."""
    out = tmp_path_factory.mktemp("whole") / "out.jsonl"
    done = subprocess.run(command(setup, out), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize("trial", range(2))
def test_sigkill_at_random_points_then_resume_gives_exactly_n_distinct_lines(setup, tmp_path, trial, unkilled):
    rng = random.Random(trial)
    out = tmp_path / "out.jsonl"
    argv = command(setup, out)
    kills = 0
    for _ in range(4):  # a few kills at random points of the run, then let it finish
        if complete_lines(out) >= N:
            break
        target = rng.randint(complete_lines(out), N - 1)
        if run_until_killed(argv, out, target, rng.uniform(0.0, 0.4)) == 0:
            break
        kills += 1
        lines = out.read_bytes().split(b"\n") if out.exists() else []
        for line in lines[:-1]:  # every complete line is a valid record, whatever the kill hit
            json.loads(line)
    finished = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert kills >= 1
    check_output(out)
    # the killed-and-resumed run wrote exactly what the unkilled one did (steer.data.rounds)
    keys = ("id", "text", "seed", "negative_ids")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [[r[k] for k in keys] for r in rows] == [[r[k] for k in keys] for r in unkilled]
