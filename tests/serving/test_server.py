"""steer serve, live: the official openai client against a server on a free port of 127.0.0.1,
started by these tests (the bundled demo models) and stopped by SIGTERM, which must exit 0."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from steer.serving.process import ServeProcess  # noqa: E402

START_SECONDS = 120  # model loading on a busy 2-core machine
STOP_SECONDS = 60
MODEL = "steer-demo"
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"


class Server(ServeProcess):
    """steer serve with a chat template, plus what the tests read from it."""

    def __init__(self, tmp_path, *args: str) -> None:
        template = tmp_path / "chat.jinja"
        template.write_text(CHAT_TEMPLATE)
        super().__init__(["--chat-template", str(template), *args], start_timeout=START_SECONDS,
                         stop_timeout=STOP_SECONDS, threads=1)  # fmt: skip
        self.start()

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=kwargs.pop("api_key", "none"), max_retries=0, timeout=120, **kwargs)

    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key="none", max_retries=0, timeout=300)

    def metrics(self) -> dict[str, float]:
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("serve"), "--max-new-tokens", "24", "--batch-size", "32")
    yield running
    assert running.stop() == 0, running.stderr[-3000:]


def idle(server: Server, timeout: float = 30.0) -> dict[str, float]:
    """The metrics once no request runs or waits and no KV block is held."""
    deadline = time.monotonic() + timeout
    while True:
        values = server.metrics()
        busy = values["steer_requests_running"] + values["steer_requests_waiting"] + values["steer_kv_blocks_used"]
        if busy == 0 or time.monotonic() > deadline:
            return values
        time.sleep(0.1)


# ---- the API ---------------------------------------------------------------------------------------


def test_models_health_and_metrics(server):
    assert [m.id for m in server.client().models.list().data] == ["steer-demo"]
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    values = server.metrics()
    for name in ("steer_requests_running", "steer_requests_waiting", "steer_kv_blocks_used", "steer_kv_blocks_total"):
        assert name in values
    assert values["steer_kv_blocks_total"] > 0


def test_completion(server):
    reply = server.client().completions.create(model=MODEL, prompt="", max_tokens=16, seed=1)
    choice = reply.choices[0]
    assert isinstance(choice.text, str) and choice.text
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens == 1  # BOS
    assert 1 <= reply.usage.completion_tokens <= 16
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.model == "steer-demo" and reply.object == "text_completion"


def test_chat_completion_uses_the_chat_template(server):
    reply = server.client().chat.completions.create(model=MODEL, 
        messages=[{"role": "user", "content": "tell me a joke"}], max_tokens=12, seed=2
    )
    assert reply.choices[0].message.role == "assistant"
    assert isinstance(reply.choices[0].message.content, str)
    # "user: tell me a joke\nassistant:" in the demo tokenizer, BOS not added by the template
    assert reply.usage.prompt_tokens > 3


def test_streaming_gives_the_same_text_as_one_body(server):
    client = server.client()
    body = client.completions.create(model=MODEL, prompt="", max_tokens=20, seed=5, temperature=0.9)
    chunks = list(client.completions.create(model=MODEL, prompt="", max_tokens=20, seed=5, temperature=0.9, stream=True,
                                            stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == body.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == body.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == body.usage.completion_tokens


def test_chat_streaming(server):
    chunks = list(server.client().chat.completions.create(model=MODEL, 
        messages=[{"role": "user", "content": "a joke"}], max_tokens=10, seed=3, stream=True))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_n_choices(server):
    reply = server.client().completions.create(model=MODEL, prompt="", max_tokens=10, n=3, seed=7)
    assert sorted(c.index for c in reply.choices) == [0, 1, 2]
    assert len({c.text for c in reply.choices}) >= 2  # seeds 7, 8, 9


def test_stop_strings_cut_the_text(server):
    client = server.client()
    free = client.completions.create(model=MODEL, prompt="", max_tokens=24, seed=11, extra_body={"ignore_eos": True}).choices[0]
    assert len(free.text) > 4
    stop = free.text[3:5]
    cut = client.completions.create(model=MODEL, prompt="", max_tokens=24, seed=11, extra_body={"ignore_eos": True}, stop=[stop, "zzzz"]).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.index(stop)]
    streamed = client.completions.create(model=MODEL, prompt="", max_tokens=24, seed=11, extra_body={"ignore_eos": True}, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut.text


def test_ignore_eos_runs_to_the_length_limit(server):
    reply = server.client().completions.create(model=MODEL, prompt="", max_tokens=24, seed=13, extra_body={"ignore_eos": True})
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 24


@pytest.mark.parametrize("fields", [
    {"gamma": 0.0, "eta": 0.0},
    {"gamma": 0.5, "eta": 0.6, "negatives": ["Why do programmers prefer dark mode?", "Because light attracts bugs."]},
    {"eta": 0.4, "negatives": ["a", "b c"], "negative_mode": "separate"},
    {"eta": 0.5, "num_negatives": 2, "negative_mode": "separate"},
    {"eta": 0.5, "num_negatives": 8, "pool": "fields-test"},
    {"eta": 0.6, "eos_exempt": True},
    {"eta": 0.6, "eos_exempt": True, "ignore_eos": True},
    {"eta": 0.5, "num_negatives": 3, "per_example_kv": True},
], ids=["plain", "negatives", "separate", "pool-separate", "named-pool", "eos-exempt", "eos-exempt-ignore-eos", "per-example-kv"])
def test_steer_fields(server, fields):
    reply = server.client().completions.create(model=MODEL, prompt="", max_tokens=12, seed=17, extra_body=fields)
    assert reply.choices[0].text is not None


def test_steer_fields_change_the_text(server):
    client = server.client()
    texts = {eta: client.completions.create(model=MODEL, prompt="", max_tokens=24, seed=19, extra_body={
        "ignore_eos": True, "eta": eta, "negatives": ["Chuck Norris can divide by zero."]}).choices[0].text for eta in (0.0, 0.9)}  # fmt: skip
    assert texts[0.0] != texts[0.9]


def test_a_named_pool_grows_with_its_completions(server):
    client = server.client()
    name = 'steer_pool_examples{pool="growing"}'
    client.completions.create(model=MODEL, prompt="", max_tokens=16, seed=23, extra_body={"pool": "growing"})
    before = server.metrics()[name]
    reply = client.completions.create(model=MODEL, prompt="", max_tokens=16, n=3, seed=29, extra_body={"pool": "growing"})
    distinct = len({c.text.strip().lower() for c in reply.choices if c.text.strip()})
    assert server.metrics()[name] == before + distinct
    # a request with its own negatives draws from no pool and grows none
    client.completions.create(model=MODEL, prompt="", max_tokens=8, seed=31, extra_body={"negatives": ["x"], "eta": 0.3})
    assert server.metrics()[name] == before + distinct


def test_per_example_kv_computes_a_clients_examples_once_across_requests(server):
    """Three requests joining the same two examples in both orders: each example's chunk is
    computed by the first and copied by the others (the metrics' chunk counters say so)."""
    client = server.client()
    examples = ["Why do programmers prefer dark mode? Because light attracts bugs.", "A SQL query walks into a bar."]
    before = idle(server)
    key = 'steer_cached_context_tokens_total{role="chunk"}'
    for negatives in (examples, examples[::-1], examples):
        client.completions.create(model=MODEL, prompt="", max_tokens=8, seed=43,
                                  extra_body={"negatives": negatives, "eta": 0.6, "per_example_kv": True})  # fmt: skip
    after = idle(server)
    asked = after['steer_context_tokens_total{role="chunk"}'] - before.get('steer_context_tokens_total{role="chunk"}', 0)
    cached = after[key] - before.get(key, 0)
    assert asked > 0 and cached >= asked / 2, (asked, cached)  # the 2nd and 3rd requests copy what the 1st computed


# ---- seeds ------------------------------------------------------------------------------------------


def test_a_seed_gives_the_same_text_alone_and_among_31_concurrent_requests(server):
    """Explicit negatives (a pool's draws depend on what the pool holds when a request arrives)."""
    request = dict(prompt="", max_tokens=24, seed=1234, temperature=1.0,
                   extra_body={"negatives": ["Why do Java developers wear glasses?"], "eta": 0.4, "gamma": 0.3})  # fmt: skip
    alone = server.client().completions.create(model=MODEL, **request).choices[0].text

    async def together():
        client = server.async_client()
        others = [client.completions.create(model=MODEL, **{**request, "seed": 5000 + i}) for i in range(31)]
        replies = await asyncio.gather(client.completions.create(model=MODEL, **request), *others)
        await client.close()
        return replies

    replies = asyncio.run(together())
    assert replies[0].choices[0].text == alone
    assert len({r.choices[0].text for r in replies}) > 10


# ---- bad input ---------------------------------------------------------------------------------------


BAD = [
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": "ten"}, "max_tokens"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": 0}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"seed": -1}, "seed"),
    ({"n": 0}, "n"),
    ({"n": 100}, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"gamma": "high"}, "gamma"),
    ({"eta": float("inf")}, None),  # not JSON: the client cannot send it; json allows it as Infinity
    ({"negatives": []}, "negatives"),
    ({"negatives": ["  "]}, "negatives"),
    ({"num_negatives": -1}, "num_negatives"),
    ({"negative_mode": "mean"}, "negative_mode"),
    ({"eos_exempt": "yes"}, "eos_exempt"),
    ({"per_example_kv": "yes"}, "per_example_kv"),
    ({"per_example_kv": True, "negative_mode": "separate"}, "per_example_kv"),
    ({"pool": "no spaces allowed"}, "pool"),
    ({"eta": 0.5, "num_negatives": 0}, "num_negatives"),
    ({"presence_penalty": 0.5}, None),
    ({"logprobs": 3}, None),
    ({"echo": True}, None),
    ({"colour": "blue"}, "colour"),
    ({"prompt": [10**9]}, "prompt"),
    ({"prompt": "x " * 5000}, "prompt"),
    ({"max_tokens": 10**6}, "max_tokens"),
    ({"model": "gpt-4"}, "model"),
    # numbers that would overflow the float32 scores, and ranges the engine would refuse later
    ({"gamma": 1e308}, "gamma"),
    ({"gamma": -1}, "gamma"),
    ({"eta": -1}, "eta"),
    ({"eta": 1.5}, "eta"),
    ({"temperature": 1e-45}, "temperature"),
    ({"temperature": 1e308}, "temperature"),
    # JSON may escape half a surrogate pair, which no tokenizer encodes
    ({"prompt": "half a pair \ud800"}, "prompt"),
    ({"prompt": ["fine", "\udfff"]}, "prompt.1"),
    ({"negatives": ["\ud800"]}, "negatives.0"),
    ({"stop": "\ud800"}, "stop"),
]


@pytest.mark.parametrize("fields, param", BAD, ids=[str(f)[:40] for f, _ in BAD])
def test_bad_fields_are_a_400_naming_the_field(server, fields, param):
    body = {"prompt": "", "max_tokens": 8, **fields}
    response = httpx.post(f"{server.url}/v1/completions", content=_json(body),
                          headers={"content-type": "application/json"}, timeout=60)  # fmt: skip
    assert response.status_code in (400, 404), response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error


def _json(body: dict) -> str:
    import json

    return json.dumps(body)


def test_bad_json_and_missing_prompt(server):
    for content in ("{not json", '{"max_tokens": 3}', "[]"):
        response = httpx.post(f"{server.url}/v1/completions", content=content, headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        assert "error" in response.json()


def test_a_body_over_the_limit_is_a_413(server):
    big = _json({"prompt": "x" * (2**20 + 10)})
    response = httpx.post(f"{server.url}/v1/completions", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"

    def chunked():  # no content-length: counted as it arrives
        for _ in range(40):
            yield b"x" * 2**15

    response = httpx.post(f"{server.url}/v1/completions", content=chunked(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    small = httpx.post(f"{server.url}/v1/completions", content=iter([_json({"prompt": "", "max_tokens": 2}).encode()]),
                       headers={"content-type": "application/json"})  # fmt: skip
    assert small.status_code == 200, small.text


def test_the_client_sees_a_400_as_bad_request(server):
    with pytest.raises(openai.BadRequestError, match="top_p"):
        server.client().completions.create(model=MODEL, prompt="", top_p=3.0)


def test_chat_content_must_be_valid_unicode(server):
    for content in ("\ud800", [{"type": "text", "text": "fine"}, {"type": "text", "text": "\udfff"}]):
        body = {"messages": [{"role": "user", "content": content}], "max_tokens": 2}
        response = httpx.post(f"{server.url}/v1/chat/completions", content=_json(body), headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "messages.0.content" and "lone surrogate" in error["message"], error


def test_chat_needs_messages(server):
    response = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": []})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"


def test_bad_requests_leave_the_server_serving(server):
    for fields, _ in BAD:
        httpx.post(f"{server.url}/v1/completions", content=_json({"prompt": "", **fields}),
                   headers={"content-type": "application/json"})  # fmt: skip
    assert server.client().completions.create(model=MODEL, prompt="", max_tokens=4).choices[0].text is not None
    assert idle(server)["steer_kv_blocks_used"] == 0


# ---- cancellation --------------------------------------------------------------------------------------


def test_a_stream_dropped_after_two_chunks_frees_its_blocks(server):
    idle(server)
    body = {"prompt": "", "max_tokens": 24, "ignore_eos": True, "stream": True, "n": 4, "seed": 37}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
        chunks = 0
        for line in response.iter_lines():
            if line.startswith("data: "):
                chunks += 1
                if chunks == 2:
                    busy = server.metrics()
                    assert busy["steer_requests_running"] + busy["steer_requests_waiting"] > 0
                    break
    values = idle(server)
    assert values["steer_requests_running"] == 0 and values["steer_kv_blocks_used"] == 0


def test_a_client_that_times_out_is_aborted(server):
    idle(server)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        # 16 x 200 tokens: seconds of work on any machine, so the 0.3 s timeout always fires first
        client.completions.create(model=MODEL, prompt="", max_tokens=200, extra_body={"ignore_eos": True}, n=16, seed=41)
    values = idle(server)
    assert values["steer_requests_running"] == 0 and values["steer_kv_blocks_used"] == 0


# ---- a small server: the queue limit, the API key, SIGTERM -------------------------------------------


def test_a_full_queue_is_a_429_and_an_api_key_is_checked(tmp_path):
    small = Server(tmp_path, "--max-waiting", "1", "--batch-size", "1", "--api-key", "sesame", "--max-new-tokens", "24")
    try:
        assert httpx.get(f"{small.url}/health").status_code == 200  # no key needed
        with pytest.raises(openai.AuthenticationError):
            small.client(api_key="wrong").completions.create(model=MODEL, prompt="", max_tokens=2)
        assert httpx.get(f"{small.url}/metrics").status_code == 401

        async def flood():
            client = openai.AsyncOpenAI(base_url=f"{small.url}/v1", api_key="sesame", max_retries=0, timeout=300)
            calls = [client.completions.create(model=MODEL, prompt="", max_tokens=24, extra_body={"ignore_eos": True}, seed=i) for i in range(8)]
            results = await asyncio.gather(*calls, return_exceptions=True)
            await client.close()
            return results

        results = asyncio.run(flood())
        limited = [r for r in results if isinstance(r, openai.RateLimitError)]
        answered = [r for r in results if not isinstance(r, Exception)]
        assert limited and answered, results
        assert all(isinstance(r, (openai.RateLimitError, openai.types.Completion)) for r in results), results
        assert "max-waiting" in limited[0].message
    finally:
        assert small.stop() == 0


def test_sigterm_finishes_what_runs_and_exits_0(tmp_path):
    server = Server(tmp_path, "--max-new-tokens", "24")
    try:
        with httpx.stream("POST", f"{server.url}/v1/completions", timeout=60,
                          json={"prompt": "", "max_tokens": 24, "ignore_eos": True, "stream": True}) as response:  # fmt: skip
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            server.process.send_signal(signal.SIGTERM)
            rest = list(lines)
        assert rest[-1] == "data: [DONE]" or rest[-2:] == ["data: [DONE]", ""], rest[-3:]
        assert server.process.wait(STOP_SECONDS) == 0
    finally:
        server.stop()
