"""The FastAPI app of ``steer serve``: OpenAI's completions and chat completions, with STEER.

A request's path: the body is parsed and checked (protocol.py: a 400 naming the field); its
prompt is tokenised (chat: the tokenizer's chat template) and checked against the model; each of
its ``n`` choices (per prompt) becomes one engine ``Request`` with its negative contexts built
from the request's ``negatives`` or drawn from a pool, framed by the request's own prompt; the
engine requests are handed to the engine loop together (429 when its queue is full), and their
tokens come back through an asyncio queue, are turned into text (text.py: stop strings, partial
characters) and sent: as one JSON body, or as server-sent events ending in ``data: [DONE]``.
Whatever way the handler ends (done, a stop string, the client gone, an error) the engine
requests still running are aborted, so their KV blocks are freed.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from steer.config import SteerConfig
from steer.engine.pool import example_budget, example_chunks, example_separator, frame_examples
from steer.engine.sequence import Request as EngineRequest
from steer.serving.engine_loop import Draining, EngineLoop, QueueFull
from steer.serving.metrics import ServerMetrics
from steer.serving.pools import Pool, Pools
from steer.serving.protocol import APIError, ChatCompletionRequest, CompletionRequest, SamplingFields, validation_error
from steer.serving.text import TextStream

DISCONNECT_POLL_SECONDS = 0.5  # how soon a vanished client's requests are aborted


@dataclass(frozen=True)
class ServeSettings:
    """What ``steer serve`` was started with; ``config`` holds every request's defaults."""

    model_name: str
    config: SteerConfig
    max_waiting: int = 256
    api_key: str | None = None
    max_n: int = 16
    max_pools: int = 64
    max_pool_examples: int = 100_000
    max_request_bytes: int = 2**20
    seed: int = 0


@dataclass
class Choice:
    """One choice of a request: its engine request and, where it drew from one, its pool."""

    index: int
    request_id: str
    request: EngineRequest
    pool: Pool | None
    stream: TextStream
    tokens: int = 0
    finish_reason: str | None = None


@dataclass
class ServerState:
    loop: EngineLoop
    tokenizer: object
    pools: Pools
    settings: ServeSettings
    metrics: ServerMetrics
    newline_ids: list[int] = field(default_factory=list)  # what ends an example without EOS: tokenised once
    created: int = field(default_factory=lambda: int(time.time()))


def create_app(engine, tokenizer, real_texts: list[str], settings: ServeSettings, *, start_loop: bool = True) -> FastAPI:
    """The app over ``engine`` (a SteerEngine it now owns: only its loop thread touches it)."""
    real = [list(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in real_texts]
    kept = [(ids, text) for ids, text in zip(real, real_texts) if ids]
    if not kept:
        raise ValueError("the real examples tokenise to nothing: the pools need at least one")
    pools = Pools([ids for ids, _ in kept], [text for _, text in kept], max_pools=settings.max_pools,
                  max_examples=settings.max_pool_examples, seed=settings.seed)  # fmt: skip
    loop = EngineLoop(engine, max_waiting=settings.max_waiting)
    newline = list(tokenizer("\n", add_special_tokens=False)["input_ids"])
    state = ServerState(loop, tokenizer, pools, settings, ServerMetrics(loop.stats, pools.sizes), newline)
    app = FastAPI(title="steer serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.steer = state
    _install_error_handlers(app)
    _install_guards(app, settings)
    _install_routes(app, state, engine)
    if start_loop:
        loop.start()
    return app


# -- errors, the API key, the body size -------------------------------------------------------------


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_, error: APIError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(Exception)
    async def unexpected(_, error: Exception):  # a bug of ours: the client still gets an OpenAI error body
        api = APIError(500, f"internal error: {type(error).__name__}: {error}")
        return JSONResponse(api.body(), status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_, error: RequestValidationError):
        api = validation_error(list(error.errors()))
        return JSONResponse(api.body(), status_code=api.status)


def _install_guards(app: FastAPI, settings: ServeSettings) -> None:
    app.add_middleware(_Guard, settings=settings)


class _Guard:
    """The API key (every route but /health) and the body size limit, as plain ASGI middleware
    (Starlette's BaseHTTPMiddleware costs every request, and every disconnect poll, a task)."""

    def __init__(self, app, settings: ServeSettings) -> None:
        self.app, self.settings = app, settings
        self.expected = f"Bearer {settings.api_key}".encode() if settings.api_key is not None else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.expected is not None and scope.get("path") != "/health":
            if not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
                return await _reply(send, APIError(401, "a valid API key is needed: send 'Authorization: Bearer <key>'",
                                                   code="invalid_api_key"))  # fmt: skip
        limit = self.settings.max_request_bytes
        too_large = APIError(413, f"the body is over this server's limit of {limit} bytes", code="body_too_large")
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > limit:
                return await _reply(send, too_large)
            return await self.app(scope, receive, send)
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        body, more = b"", True  # a chunked body: read it up to the limit, then hand it on
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                return await _reply(send, too_large)
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def _reply(send, error: APIError) -> None:
    payload = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": payload})


# -- routes -----------------------------------------------------------------------------------------


def _install_routes(app: FastAPI, state: ServerState, engine) -> None:
    @app.get("/health")
    async def health():
        if not state.loop.alive:
            return JSONResponse({"status": "engine loop stopped"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models():
        card = {"id": state.settings.model_name, "object": "model", "created": state.created, "owned_by": "steer"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: Request):
        prompts = [_prompt_ids(state, engine, p) for p in body.prompts()]
        return await _answer(state, engine, body, prompts, http, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, http: Request):
        return await _answer(state, engine, body, [_chat_prompt_ids(state, body)], http, chat=True)


def _prompt_ids(state: ServerState, engine, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, list):
        bad = next((t for t in prompt if not 0 <= t < engine.vocab_size), None)
        if bad is not None:
            raise APIError(400, f"prompt: token id {bad} is not in the model's vocabulary [0, {engine.vocab_size})", param="prompt")
        return list(prompt)
    tokenizer = state.tokenizer
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else []
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):  # as the model saw its training text begin
        ids = [bos] + ids
    if not ids:
        raise APIError(400, "prompt: empty, and the tokenizer has no BOS token to start from", param="prompt")
    return ids


def _chat_prompt_ids(state: ServerState, body: ChatCompletionRequest) -> list[int]:
    tokenizer = state.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise APIError(400, "this model's tokenizer has no chat template: use /v1/completions, or start the server "
                       "with --chat-template FILE", param="messages", code="no_chat_template")  # fmt: skip
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    try:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    except Exception as error:  # a template that rejects these messages (roles, order)
        raise APIError(400, f"messages: the chat template refused them: {error}", param="messages") from None
    if hasattr(ids, "keys"):  # a BatchEncoding
        ids = ids["input_ids"]
    ids = list(ids)
    if not ids:
        raise APIError(400, "messages: the chat template made an empty prompt", param="messages")
    return ids


# -- one request: plan, submit, collect -------------------------------------------------------------


def _setting(body, name: str, config: SteerConfig):
    value = getattr(body, name)
    return getattr(config, name) if value is None else value


def _plan(state: ServerState, engine, body, prompts: list[list[int]], *, chat: bool) -> list[Choice]:
    settings, tokenizer = state.settings, state.tokenizer
    config = settings.config
    if body.model is not None and body.model != settings.model_name:
        raise APIError(404, f"model: {body.model!r} is not served here (this server serves {settings.model_name!r})",
                       param="model", code="model_not_found")  # fmt: skip
    if body.n * len(prompts) > settings.max_n:
        raise APIError(400, f"n: {body.n} choices x {len(prompts)} prompts is over this server's limit of {settings.max_n}", param="n")
    gamma, eta = _setting(body, "gamma", config), _setting(body, "eta", config)
    mode = _setting(body, "negative_mode", config)
    num_negatives = _setting(body, "num_negatives", config)
    top_k = _setting(body, "top_k", config)
    top_k = 0 if top_k == -1 else top_k
    max_tokens = (body.length_limit() if chat else body.max_tokens) or config.max_new_tokens
    if gamma != 0 and not engine.has_base:
        raise APIError(400, "gamma: this server has no base model to contrast with (start it with --base or a LoRA expert), "
                       "so gamma must be 0", param="gamma")  # fmt: skip
    if eta != 0 and body.negatives is None and num_negatives == 0:
        raise APIError(400, f"num_negatives: eta = {eta} needs at least one negative example", param="num_negatives")
    negatives = None
    if eta != 0 and body.negatives is not None:
        negatives = [list(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in body.negatives]
        empty = next((i for i, ids in enumerate(negatives) if not ids), None)
        if empty is not None:
            raise APIError(400, f"negatives[{empty}] tokenises to nothing", param="negatives")
    pool = state.pools.get(body.pool or "default") if eta != 0 and negatives is None else None
    if body.per_example_kv and mode != "concat":
        raise APIError(400, f"per_example_kv: it applies to negative_mode 'concat' (joined contexts assembled from each example's KV); "
                       f"negative_mode {mode!r} computes each example's KV once already", param="per_example_kv")  # fmt: skip
    chunked = mode == "concat" and _setting(body, "per_example_kv", config)
    if chunked and eta != 0 and engine.per_example_kv_unsupported:
        raise APIError(400, f"per_example_kv: {engine.per_example_kv_unsupported}", param="per_example_kv")
    newline = state.newline_ids
    choices = []
    for prompt_index, prompt_ids in enumerate(prompts):
        _check_length(engine, prompt_ids, max_tokens)
        separator = example_separator(prompt_ids, tokenizer.eos_token_id, newline)
        for i in range(body.n):
            seed = None if body.seed is None else (body.seed + len(choices)) % 2**63
            streams = []
            if eta != 0:
                examples = negatives if negatives is not None else pool.draw(num_negatives, seed)
                examples = _fit(engine, examples, mode, max_tokens, len(prompt_ids), len(separator))
                streams = frame_examples(examples, mode, prompt_ids, separator, separator)
            chunks = [example_chunks(examples, prompt_ids, separator, separator)] if streams and chunked else []
            try:  # the fields were checked one by one; here the engine checks them together
                request = EngineRequest(
                    prompt_ids, streams, max_tokens, eos_token_id=None if body.ignore_eos else tokenizer.eos_token_id,
                    gamma=gamma, eta=eta, temperature=_setting(body, "temperature", config), top_k=top_k,
                    top_p=_setting(body, "top_p", config), seed=seed,
                    eos_exempt=False if body.ignore_eos else _setting(body, "eos_exempt", config),  # EOS is then an ordinary token
                    negative_chunks=chunks,
                )  # fmt: skip
                engine.check_request(request)
            except ValueError as error:
                raise APIError(400, str(error), param=_named_field(str(error))) from None
            choices.append(Choice(len(choices), f"{uuid.uuid4().hex}-{len(choices)}", request, pool,
                                  TextStream(tokenizer, body.stop or [])))  # fmt: skip
    return choices


def _named_field(message: str) -> str | None:
    """The request field an engine's ValueError is about, from the name it starts with."""
    first = message.split(" ", 1)[0].split("[", 1)[0].rstrip(":")
    fields = {"prompt_ids": "prompt", "negative_ids": "negatives", "max_new_tokens": "max_tokens"}
    known = set(SamplingFields.model_fields) | {"prompt"}
    return fields.get(first, first if first in known else None)


def _check_length(engine, prompt_ids: list[int], max_tokens: int) -> None:
    limit = engine.max_context_length
    if limit is not None and len(prompt_ids) + max_tokens > limit:
        raise APIError(400, f"the prompt's {len(prompt_ids)} tokens plus max_tokens {max_tokens} are over the model's "
                       f"context of {limit} tokens", param="max_tokens" if len(prompt_ids) < limit else "prompt",
                       code="context_length_exceeded")  # fmt: skip


def _fit(engine, examples: list[list[int]], mode: str, max_tokens: int, prefix: int, separator: int) -> list[list[int]]:
    """The examples cut so that every negative context plus the completion fits the model."""
    per_stream = len(examples) if mode == "concat" else 1
    budget = example_budget(engine.max_context_length, max_tokens, prefix, separator, per_stream)
    if budget is None:
        return examples
    if budget < 1:
        raise APIError(400, f"the model's context ({engine.max_context_length} tokens) cannot hold the prompt, {per_stream} "
                       f"negative example(s) and max_tokens {max_tokens}: lower num_negatives or max_tokens, or use "
                       "negative_mode 'separate'", param="num_negatives", code="context_length_exceeded")  # fmt: skip
    return [example[:budget] for example in examples]


class _Sink:
    """Hands a choice's outputs from the engine loop's thread to the handler's asyncio queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, index: int) -> None:
        self.loop, self.queue, self.index = loop, queue, index

    def put(self, output) -> None:
        self._send(output)

    def fail(self, error: Exception) -> None:
        self._send(error)

    def _send(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (self.index, item))
        except RuntimeError:  # the event loop is gone (shutdown): nobody is waiting
            pass


def _submit(state: ServerState, choices: list[Choice]) -> asyncio.Queue:
    """Hand the choices' engine requests to the loop (all or none); their outputs arrive on the
    returned queue. A 429 when the loop's queue is full, a 503 while the server shuts down."""
    queue: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()
    try:
        state.loop.submit([(c.request_id, c.request, _Sink(loop, queue, c.index)) for c in choices])
    except QueueFull as error:
        raise APIError(429, str(error), code="queue_full") from None
    except Draining as error:
        raise APIError(503, str(error), code="shutting_down") from None
    return queue


async def _events(state: ServerState, choices: list[Choice], queue: asyncio.Queue):
    """(choice, text piece, finish reason or None) as the engine produces them; aborts, on any
    exit, the engine requests still running."""
    open_choices = {c.index for c in choices}
    try:
        while open_choices:
            index, item = await queue.get()
            if index not in open_choices:
                continue  # a choice cut by a stop string: its last outputs before the abort
            choice = choices[index]
            if isinstance(item, Exception):
                raise APIError(400 if isinstance(item, ValueError) else 500, str(item)) from None
            piece = choice.stream.add(item.new_token_ids)
            choice.tokens += len(item.new_token_ids)
            if choice.stream.stopped:
                choice.finish_reason = "stop"
            elif item.finished:
                piece += choice.stream.finish()
                choice.finish_reason = "stop" if item.finish_reason == "eos" else "length"
            if choice.finish_reason is not None:
                open_choices.discard(index)
                if choice.stream.stopped and not item.finished:
                    state.loop.abort(choice.request_id)
                _grow_pool(state, choice)
            yield choice, piece, choice.finish_reason
    finally:
        for index in open_choices:
            state.loop.abort(choices[index].request_id)


def _grow_pool(state: ServerState, choice: Choice) -> None:
    if choice.pool is not None:
        text = choice.stream.text.strip()
        choice.pool.add(text, list(state.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else [])


async def _answer(state: ServerState, engine, body, prompts: list[list[int]], http: Request, *, chat: bool):
    endpoint = "chat" if chat else "completions"
    started = time.perf_counter()
    try:
        choices = _plan(state, engine, body, prompts, chat=chat)
        queue = _submit(state, choices)
    except APIError as error:
        state.metrics.requests.labels(endpoint, str(error.status)).inc()
        raise
    usage = {"prompt_tokens": sum(len(p) for p in prompts)}
    reply_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(_stream(state, choices, queue, reply_id, usage, chat, include_usage, started, endpoint),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})  # fmt: skip
    events = _events(state, choices, queue)
    collect = asyncio.ensure_future(_collect(events, state, started))
    watch = asyncio.ensure_future(_until_disconnected(http))
    try:
        done, _ = await asyncio.wait({collect, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if collect not in done:  # the client went away: stop its engine requests now
        collect.cancel()
        await asyncio.gather(collect, return_exceptions=True)
        await events.aclose()
        state.metrics.requests.labels(endpoint, "499").inc()
        return Response(status_code=499)
    try:
        collect.result()
    except APIError as error:
        state.metrics.requests.labels(endpoint, str(error.status)).inc()
        raise
    completion = sum(c.tokens for c in choices)
    _count(state, endpoint, usage["prompt_tokens"], completion, started)
    return _body(reply_id, state, choices, chat, {**usage, "completion_tokens": completion,
                                                  "total_tokens": usage["prompt_tokens"] + completion})  # fmt: skip


async def _collect(events, state: ServerState, started: float) -> None:
    first = True
    async for _ in events:
        if first:
            state.metrics.first_token.observe(time.perf_counter() - started)
            first = False


async def _until_disconnected(http: Request) -> None:
    while not await http.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)


def _count(state: ServerState, endpoint: str, prompt_tokens: int, completion_tokens: int, started: float) -> None:
    metrics = state.metrics
    metrics.requests.labels(endpoint, "200").inc()
    metrics.prompt_tokens.inc(prompt_tokens)
    metrics.generation_tokens.inc(completion_tokens)
    metrics.latency.observe(time.perf_counter() - started)


def _body(reply_id: str, state: ServerState, choices: list[Choice], chat: bool, usage: dict) -> dict:
    common = {"id": reply_id, "created": int(time.time()), "model": state.settings.model_name, "usage": usage}
    if chat:
        return {**common, "object": "chat.completion", "choices": [
            {"index": c.index, "message": {"role": "assistant", "content": c.stream.text}, "finish_reason": c.finish_reason,
             "logprobs": None} for c in choices]}  # fmt: skip
    return {**common, "object": "text_completion", "choices": [
        {"index": c.index, "text": c.stream.text, "finish_reason": c.finish_reason, "logprobs": None} for c in choices]}  # fmt: skip


def _chunk(reply_id: str, state: ServerState, chat: bool, index: int, piece: str, finish: str | None, *, first: bool) -> dict:
    common = {"id": reply_id, "created": int(time.time()), "model": state.settings.model_name}
    if chat:
        delta = {"role": "assistant", "content": piece} if first else ({"content": piece} if piece else {})
        return {**common, "object": "chat.completion.chunk",
                "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}]}  # fmt: skip
    return {**common, "object": "text_completion", "choices": [{"index": index, "text": piece, "finish_reason": finish,
                                                                "logprobs": None}]}  # fmt: skip


async def _stream(state: ServerState, choices, queue, reply_id, usage, chat, include_usage, started, endpoint):
    """The server-sent events of a streamed request; a dropped connection cancels this generator,
    whose events' exit aborts the engine requests."""
    status, greeted = "200", set()
    try:
        async for choice, piece, finish in _events(state, choices, queue):
            if not piece and finish is None:
                continue  # text held back (a partial character, the start of a stop string)
            if not greeted:
                state.metrics.first_token.observe(time.perf_counter() - started)
            first = choice.index not in greeted
            greeted.add(choice.index)
            yield _sse(_chunk(reply_id, state, chat, choice.index, piece, finish, first=first))
        completion = sum(c.tokens for c in choices)
        if include_usage:
            final = {"id": reply_id, "object": "chat.completion.chunk" if chat else "text_completion",
                     "created": int(time.time()), "model": state.settings.model_name, "choices": [],
                     "usage": {**usage, "completion_tokens": completion, "total_tokens": usage["prompt_tokens"] + completion}}  # fmt: skip
            yield _sse(final)
        yield "data: [DONE]\n\n"
        state.metrics.prompt_tokens.inc(usage["prompt_tokens"])
        state.metrics.generation_tokens.inc(completion)
        state.metrics.latency.observe(time.perf_counter() - started)
    except APIError as error:  # after the response started: the error as one last event
        status = str(error.status)
        yield _sse(error.body())
        yield "data: [DONE]\n\n"
    except BaseException:
        status = "499"
        raise
    finally:
        state.metrics.requests.labels(endpoint, status).inc()


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
