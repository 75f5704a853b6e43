"""steer serve under load, on the bundled demo models (CPU).

    python -m pytest benchmarks/serve/test_bench_serve.py -s

1. Load: 64 concurrent clients (the async openai client) send 500 completion requests between
   them (the server's default STEER settings, negatives drawn from the default pool, which grows
   with every completion): every request answered exactly once, no 5xx; p50 / p99 latency and
   throughput printed.
2. Batching: the same 64 requests sent one at a time, then by 32 concurrent clients: the ratio
   of the throughputs is what continuous batching across clients buys (target >= 5x).

One server serves both, started by the test on a free port of 127.0.0.1 and stopped by SIGTERM.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from steer.serving.process import ServeProcess  # noqa: E402

MAX_TOKENS = 32
LOAD_REQUESTS, LOAD_CLIENTS = 500, 64
BATCH_REQUESTS, BATCH_CLIENTS = 64, 32
SERVER_ARGS = ["--batch-size", "64", "--max-waiting", "1024", "--max-new-tokens", str(MAX_TOKENS)]


async def _drive(base_url: str, requests: int, clients: int) -> dict:
    """Send ``requests`` completions from ``clients`` concurrent workers; what came back."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=600)
    todo: asyncio.Queue = asyncio.Queue()
    for index in range(requests):
        todo.put_nowait(index)
    answers: dict[int, list] = {}
    latencies, errors, tokens = [], [], 0

    async def worker():
        nonlocal tokens
        while True:
            try:
                index = todo.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.perf_counter()
            try:
                reply = await client.completions.create(model="steer-demo", prompt="", max_tokens=MAX_TOKENS, seed=index)
            except openai.APIError as error:
                errors.append((index, getattr(error, "status_code", None), str(error)[:200]))
                continue
            latencies.append(time.perf_counter() - started)
            answers.setdefault(index, []).append(reply.choices[0].text)
            tokens += reply.usage.completion_tokens

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    seconds = time.perf_counter() - started
    await client.close()
    return {"answers": answers, "latencies": latencies, "errors": errors, "tokens": tokens, "seconds": seconds}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


@pytest.fixture(scope="module")
def server():
    with ServeProcess(SERVER_ARGS) as running:
        yield running
    assert running.process.returncode == 0, running.stderr[-2000:]


def test_load_64_clients_500_requests(benchmark, server):
    run = asyncio.run(_drive(server.base_url, LOAD_REQUESTS, LOAD_CLIENTS))
    assert not run["errors"], run["errors"][:5]
    assert sorted(run["answers"]) == list(range(LOAD_REQUESTS)), "a request was lost"
    assert all(len(texts) == 1 for texts in run["answers"].values()), "a request was answered twice"
    report = {
        "requests": LOAD_REQUESTS, "clients": LOAD_CLIENTS, "seconds": run["seconds"],
        "requests_per_s": LOAD_REQUESTS / run["seconds"], "tokens_per_s": run["tokens"] / run["seconds"],
        "p50_latency_s": statistics.median(run["latencies"]), "p99_latency_s": _percentile(run["latencies"], 0.99),
    }  # fmt: skip
    benchmark.extra_info.update(report)
    benchmark.pedantic(lambda: None, rounds=1)
    print(f"\n[serve load] {LOAD_REQUESTS} requests from {LOAD_CLIENTS} clients in {run['seconds']:.1f} s: "
          f"{report['requests_per_s']:.1f} req/s, {report['tokens_per_s']:.0f} tokens/s, "
          f"p50 {report['p50_latency_s']:.2f} s, p99 {report['p99_latency_s']:.2f} s, 0 errors, each answered once")  # fmt: skip


def test_concurrent_vs_sequential_throughput(benchmark, server):
    asyncio.run(_drive(server.base_url, 8, 8))  # warm up
    sequential = asyncio.run(_drive(server.base_url, BATCH_REQUESTS, 1))
    concurrent = asyncio.run(_drive(server.base_url, BATCH_REQUESTS, BATCH_CLIENTS))
    for run in (sequential, concurrent):
        assert not run["errors"] and len(run["answers"]) == BATCH_REQUESTS
    speeds = {name: run["tokens"] / run["seconds"] for name, run in (("sequential", sequential), ("concurrent", concurrent))}
    ratio = speeds["concurrent"] / speeds["sequential"]
    benchmark.extra_info.update({**{f"{k}_tokens_per_s": v for k, v in speeds.items()}, "concurrent_over_sequential": ratio})
    benchmark.pedantic(lambda: None, rounds=1)
    print(f"\n[serve batching] {BATCH_REQUESTS} requests: one at a time {speeds['sequential']:.0f} tokens/s "
          f"({sequential['seconds']:.1f} s), {BATCH_CLIENTS} concurrent {speeds['concurrent']:.0f} tokens/s "
          f"({concurrent['seconds']:.1f} s): {ratio:.1f}x")  # fmt: skip
