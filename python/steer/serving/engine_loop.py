"""The engine loop: one thread that owns the SteerEngine and steps it while there is work.

The HTTP handlers (on the asyncio event loop) never touch the engine. They hand a request to
``submit`` with a sink, and the loop thread admits it at its next step (``add_request``), steps
the engine and passes every ``RequestOutput`` to the request's sink; ``abort`` (a client that
went away) is applied before the next step, and the request's KV blocks are free after it.

Backpressure: ``submit`` refuses (``QueueFull``, an HTTP 429) once ``max_waiting`` requests are
waiting: submitted and not yet decoding (in this loop's queue or the scheduler's). After
``stop_admitting`` (SIGTERM) every submit is refused (``Draining``, a 503) while what runs
finishes. A request the engine rejects (``add_request``'s ValueError) fails alone, as does one
whose logits its step could not sample from (``RequestOutput.error``: NaN, say); a step that
raises fails every request it held (the engine has dropped them and freed their blocks) and the
loop goes on with later requests.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field


class QueueFull(Exception):
    pass


class Draining(Exception):
    pass


@dataclass
class LoopStats:
    """What /metrics and /health report, refreshed by the loop thread after every step."""

    running: int = 0
    waiting: int = 0
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0
    steps: int = 0
    step_errors: int = 0
    request_errors: int = 0  # requests failed alone (RequestOutput.error)
    # per stream role, context tokens admitted and found cached (SteerEngine.prefix_cache_stats);
    # copies, replaced whole after each step, so a scrape never reads a dict being written
    context_tokens: dict = field(default_factory=dict)
    cached_tokens: dict = field(default_factory=dict)


class EngineLoop:
    def __init__(self, engine, *, max_waiting: int) -> None:
        self.engine, self.max_waiting = engine, max_waiting
        self.stats = LoopStats(kv_blocks_total=engine.blocks.num_blocks)
        self._lock = threading.Condition()
        self._incoming: deque = deque()  # (request id, engine Request, sink)
        self._aborts: deque = deque()
        self._sinks: dict[object, object] = {}  # admitted request id -> sink (loop thread only)
        self._admitting, self._stopping = True, False
        self._thread = threading.Thread(target=self._run, name="steer-engine-loop", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # -- called from the event loop ----------------------------------------------------------------

    def submit(self, items: list[tuple]) -> None:
        """Queue (request id, engine Request, sink) items together: all or none."""
        with self._lock:
            if not self._admitting:
                raise Draining("the server is shutting down and takes no new requests")
            waiting = len(self._incoming) + self.stats.waiting
            if waiting + len(items) > self.max_waiting:
                raise QueueFull(f"{waiting} requests are waiting, the limit is {self.max_waiting} (--max-waiting): retry later")
            self._incoming.extend(items)
            self._lock.notify()

    def abort(self, request_id) -> None:
        with self._lock:
            self._aborts.append(request_id)
            self._lock.notify()

    def stop_admitting(self) -> None:
        with self._lock:
            self._admitting = False

    def stop(self, timeout: float = 10.0) -> None:
        """Abort what is left, fail its sinks, and end the thread."""
        with self._lock:
            self._admitting, self._stopping = False, True
            self._lock.notify()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the loop thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                if not self._iteration():
                    return
            except Exception as error:  # a bug of ours: fail what is held, never leave the thread
                self._fail_all(list(self._sinks.values()), RuntimeError(f"the engine loop failed ({type(error).__name__}: {error})"))
                self._refresh_stats()

    def _iteration(self) -> bool:
        """Admit, abort, step once; False once the loop is stopped."""
        with self._lock:
            while not (self._incoming or self._aborts or self._stopping or self.engine.has_unfinished_requests()):
                self._lock.wait()
            incoming, self._incoming = list(self._incoming), deque()
            aborts, self._aborts = list(self._aborts), deque()
            stopping = self._stopping
        if stopping:
            sinks = [item[2] for item in incoming] + list(self._sinks.values())
            self._fail_all(sinks, RuntimeError("the server shut down before this request finished"))
            return False
        for request_id in aborts:
            if self.engine.abort_request(request_id):
                self._sinks.pop(request_id, None)
        for request_id, request, sink in incoming:
            try:
                self.engine.add_request(request, request_id=request_id)
            except Exception as error:  # ValueError: checked in the handler already, so rare
                sink.fail(error)
                continue
            self._sinks[request_id] = sink
        self._refresh_stats()  # the admitted requests count as waiting while the step runs
        self._step()
        return True

    def _step(self) -> None:
        if not self.engine.has_unfinished_requests():
            self._refresh_stats()
            return
        try:
            outputs = self.engine.step()
        except Exception as error:  # the engine dropped every request it held, blocks freed
            self.stats.step_errors += 1
            self._fail_all(list(self._sinks.values()), RuntimeError(f"the engine failed on a step ({type(error).__name__}: {error})"))
            self._refresh_stats()
            return
        self._refresh_stats()
        for output in outputs:
            sink = self._sinks.get(output.request_id)
            if output.finished:
                self._sinks.pop(output.request_id, None)
            if sink is None:
                continue
            if output.error is not None:  # this request alone: the sampler refused its logits
                self.stats.request_errors += 1
                sink.fail(RuntimeError(f"the model's logits for this request could not be sampled from: {output.error}"))
            else:
                sink.put(output)

    def _refresh_stats(self) -> None:
        scheduler, blocks = self.engine.scheduler, self.engine.blocks
        self.stats.running = len(scheduler.running)
        self.stats.waiting = len(scheduler.waiting)
        self.stats.kv_blocks_used = blocks.num_blocks - blocks.num_free_blocks
        cache = scheduler.cache_stats
        self.stats.context_tokens, self.stats.cached_tokens = dict(cache.context_tokens), dict(cache.cached_tokens)
        self.stats.steps += 1

    def _fail_all(self, sinks, error: Exception) -> None:
        """After a stop or a failure: nothing stays admitted (blocks freed), every sink is told."""
        for request_id in list(self._sinks):
            self.engine.abort_request(request_id)
        self._sinks.clear()
        for sink in sinks:
            sink.fail(error)

