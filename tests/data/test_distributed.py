"""steer generate --workers on a local Ray cluster of CPU workers (started and stopped by each run),
on the bundled demo models: exactly n records, the very records of a single-process run, also
when a worker is SIGKILLed mid-run or the driver is SIGKILLed and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

N = 30
KEYS = ("id", "text", "seed", "negative_ids", "finish_reason")
# Rounds of 4 attempts: with 2 workers of batch 3, the planner often has nothing to hand out until
# a round is accepted, so the pool's bounded staleness is exercised.
ROUNDS = ("--max-new-tokens", "12", "--batch-size", "3", "--pool-round", "4")
# Every attempt available from the start (two rounds of 16 draw from the real examples alone), so
# each worker holds attempts at every instant of the run but its last moments.
BUSY = ("--max-new-tokens", "24", "--batch-size", "3", "--pool-round", "16")


def command(out, settings, *extra):
    """steer generate on the demo models (its defaults) with the demo's real jokes."""
    return [sys.executable, "-m", "steer.cli", "generate", "--out", str(out), "--n", str(N), *settings, "--quiet", *extra]


def rows(path) -> list[list]:
    return [[json.loads(line)[k] for k in KEYS] for line in path.read_text().splitlines()]


def run(argv, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def single_process(tmp_path_factory, settings):
    out = tmp_path_factory.mktemp("single") / "out.jsonl"
    run(command(out, settings))
    return rows(out)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return single_process(tmp_path_factory, ROUNDS)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_workers_write_the_single_process_records(tmp_path, single, workers):
    out = tmp_path / "out.jsonl"
    done = run(command(out, ROUNDS, "--workers", workers, "--threads-per-worker", "1"))
    assert rows(out) == single
    assert [r[0] for r in rows(out)] == list(range(N)) and len({r[1].lower() for r in rows(out)}) == N
    assert "worker 0:" in done.stdout and (workers == "1" or "worker 1:" in done.stdout)


def _workers_of(process, doing: str = "DecodeWorker") -> list:
    """The run's worker processes whose title (Ray sets it to the method running) has ``doing``."""
    found = []
    for child in psutil.Process(process.pid).children(recursive=True):
        try:
            if doing in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def _title_has(process, doing: str) -> bool:
    try:
        return doing in " ".join(process.cmdline())
    except psutil.Error:
        return False


def _lines(path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_a_worker_killed_mid_run_is_replaced_and_its_samples_redone(tmp_path_factory, tmp_path):
    expected = single_process(tmp_path_factory, BUSY)
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command(out, BUSY, "--workers", "2", "--threads-per-worker", "1"), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        # A worker killed in its __init__ loses nothing (Ray hands the calls queued for it to the
        # restarted actor), so the kill waits for a worker running advance: it holds attempts from
        # then on (those of the call, then those left in its engine) until the run's last moments,
        # so it is killed at once rather than after some records are written, which can be the
        # run's end (acceptance is in attempt order: the first records wait for the slowest worker).
        # The workers are found once (a scan of the run's process tree takes tens of ms, longer
        # than a fast host's advance call), then only their titles are polled.
        deadline, workers, busy = time.monotonic() + 240, [], []
        while not busy and process.poll() is None and time.monotonic() < deadline:
            if len(workers) < 2:
                workers = _workers_of(process)
            busy = [worker for worker in workers if _title_has(worker, "DecodeWorker.advance")]
            time.sleep(0.001)
        if not busy:
            stdout, stderr = process.communicate(timeout=60) if process.poll() is not None else ("", "")
            raise AssertionError(f"no DecodeWorker process was seen running advance (run exit: {process.poll()}, "
                                 f"{_lines(out)} records)\n{stdout[-1000:]}{stderr[-3000:]}")  # fmt: skip
        os.kill(busy[0].pid, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr[-3000:]
    assert _lines(out) == N and rows(out) == expected
    assert "lost and redone" in stdout, stdout + stderr[-2000:]  # the kill cost the worker its attempts


def test_a_worker_reports_the_attempts_it_does_not_hold(models, tmp_path):
    """A call that reaches a restarted actor (Ray queues calls sent while it restarts) must not
    leave the driver waiting for attempts that died with the old process."""
    from steer.config import SteerConfig
    from steer.data.distributed import DecodeWorker
    from steer.data.generate import GenerateRequest, plan_generation
    from steer.engine.sequence import Request

    plan = plan_generation(GenerateRequest(
        real_texts=["a cat sat", "a dog ran"], real_name="real", expert=str(models["expert"]), base=str(models["base"]),
        prompt="", n=2, out=tmp_path / "out.jsonl", config=SteerConfig(eta=0, seed=0),
    ))  # fmt: skip
    worker = DecodeWorker(plan, threads=1)
    short, long = (Request(plan.prompt_ids, [], tokens, eos_token_id=None, seed=1) for tokens in (2, 6))
    finished, missing = worker.advance([(0, short), (1, long)], holding=[7])
    assert [f[0] for f in finished] == [0] and missing == [7]
    finished, missing = worker.advance([], holding=[1])
    assert [(f[0], len(f[1]), f[2]) for f in finished] == [(1, 6, "length")] and missing == []
    restarted = DecodeWorker(plan, threads=1)
    assert restarted.advance([], holding=[1]) == ([], [1])


def test_a_killed_driver_resumes_to_the_same_records(tmp_path, single):
    out = tmp_path / "out.jsonl"
    argv = command(out, ROUNDS, "--workers", "2", "--threads-per-worker", "1", "--resume")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while _lines(out) < N // 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    for child in psutil.Process(process.pid).children(recursive=True):  # the driver and its local cluster
        try:
            child.kill()
        except psutil.Error:
            pass
    process.kill()
    process.wait()
    assert _lines(out) < N, "the run finished before it could be killed"
    run(argv)
    assert rows(out) == single


def test_sweep_with_workers_writes_the_cells_of_a_sweep_without(tmp_path):
    def sweep(out, *extra):
        run([sys.executable, "-m", "steer.cli", "sweep", "--gammas", "0.3", "--etas", "0,0.5", "--n", "10",
             "--max-new-tokens", "8", "--batch-size", "3", "--out", str(out), "--embedder", "tfidf", "--quiet", *extra])  # fmt: skip

    sweep(tmp_path / "local")
    sweep(tmp_path / "ray", "--workers", "2")
    for cell in ("gamma0.3_eta0.jsonl", "gamma0.3_eta0.5.jsonl"):
        assert rows(tmp_path / "ray" / cell) == rows(tmp_path / "local" / cell)
