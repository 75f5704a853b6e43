"""The server's parts without HTTP: the engine loop thread (admission, backpressure, failures,
stop) on a tiny random model, and the text stream (stop strings, partial characters)."""

from __future__ import annotations

import queue
import threading

import pytest
from tiny_models import EOS, expert_and_base

from steer import Request, SteerConfig
from steer.engine.engine import SteerEngine
from steer.serving.engine_loop import Draining, EngineLoop, QueueFull
from steer.serving.text import TextStream

TIMEOUT = 60


class Sink:
    """Collects a request's outputs (or its failure) from the loop thread."""

    def __init__(self) -> None:
        self.items: queue.Queue = queue.Queue()

    def put(self, output) -> None:
        self.items.put(output)

    def fail(self, error: Exception) -> None:
        self.items.put(error)

    def result(self):
        """The finished request's tokens, or the exception it failed with."""
        while True:
            item = self.items.get(timeout=TIMEOUT)
            if isinstance(item, Exception):
                return item
            if item.finished:
                return item.token_ids


def engine(**options) -> SteerEngine:
    expert, base = expert_and_base("llama")
    config = SteerConfig(gamma=0.5, eta=0.5, temperature=0.0, max_new_tokens=6)
    return SteerEngine(expert, base, config=config, block_size=4, **options)


def request(prompt=(5, 6, 7)) -> Request:
    return Request(list(prompt), [[20, 21, 22]], 6, eos_token_id=EOS)


@pytest.fixture
def loop():
    running = EngineLoop(engine(), max_waiting=4)
    running.start()
    yield running
    running.stop()
    assert not running.alive


def test_requests_run_and_give_the_engines_tokens(loop):
    want = engine().generate([request(), request((9, 10))])
    sinks = [Sink(), Sink()]
    loop.submit([("a", request(), sinks[0]), ("b", request((9, 10)), sinks[1])])
    assert [s.result() for s in sinks] == [r.token_ids for r in want]
    assert loop.engine.blocks.num_free_blocks == loop.engine.blocks.num_blocks


def gated(loop) -> tuple[threading.Event, threading.Event]:
    """Make the loop's steps wait for ``gate``; ``inside`` is set once a step is waiting."""
    gate, inside = threading.Event(), threading.Event()
    original = loop.engine.step

    def step():
        inside.set()
        gate.wait(TIMEOUT)
        return original()

    loop.engine.step = step
    return gate, inside


def test_a_full_queue_refuses_the_whole_submission(loop):
    gate, inside = gated(loop)
    first = Sink()
    loop.submit([("first", request(), first)])
    assert inside.wait(TIMEOUT)  # "first" admitted, not yet scheduled: 1 waiting
    items = [(f"r{i}", request(), Sink()) for i in range(4)]
    with pytest.raises(QueueFull, match="1 requests are waiting, the limit is 4"):
        loop.submit(items)  # 1 + 4 > 4: none of them queued
    loop.submit(items[:3])
    gate.set()
    assert isinstance(first.result(), list)
    assert all(isinstance(sink.result(), list) for _, _, sink in items[:3])


def test_a_request_the_engine_refuses_fails_alone(loop):
    bad, good = Sink(), Sink()
    too_long = Request([5] * 300, [[20]], 6)  # over the tiny model's 256 positions
    loop.submit([("bad", too_long, bad), ("good", request(), good)])
    assert isinstance(bad.result(), ValueError)
    assert isinstance(good.result(), list)


def test_a_step_that_raises_fails_its_requests_and_the_loop_goes_on(loop):
    original, calls = loop.engine.runner.run, []

    def fail_once(plan):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return original(plan)

    loop.engine.runner.run = fail_once
    failed = [Sink(), Sink()]
    loop.submit([("x", request(), failed[0]), ("y", request((8, 9)), failed[1])])
    for sink in failed:
        error = sink.result()
        assert isinstance(error, RuntimeError) and "boom" in str(error)
    later = Sink()
    loop.submit([("z", request(), later)])
    assert isinstance(later.result(), list)
    assert loop.stats.step_errors == 1
    assert loop.engine.blocks.num_free_blocks == loop.engine.blocks.num_blocks


def test_a_request_whose_logits_are_nan_fails_alone_and_its_batch_goes_on(loop):
    """One client's NaN (its prompt overflowing a half-precision model, say) fails its request
    alone: the request beside it in the same steps gets the tokens it gets without it."""
    want = engine().generate([request((9, 10))])[0].token_ids
    original = loop.engine.runner.run

    def run(plan):
        logits = original(plan)
        for row, group in enumerate(plan.groups):
            if group.request_id == "poisoned" and len(group.generated) == 2:
                logits[row, 0, 3] = float("nan")
        return logits

    loop.engine.runner.run = run
    sinks = [Sink(), Sink()]
    loop.submit([("poisoned", request(), sinks[0]), ("fine", request((9, 10)), sinks[1])])
    failed, fine = (s.result() for s in sinks)
    assert isinstance(failed, RuntimeError) and "logits contain NaN" in str(failed), failed
    assert fine == want
    assert loop.stats.request_errors == 1 and loop.stats.step_errors == 0
    assert loop.engine.blocks.num_free_blocks == loop.engine.blocks.num_blocks


def test_abort_frees_the_blocks(loop):
    gate, _ = gated(loop)
    sink = Sink()
    loop.submit([("long", Request([5, 6], [[20, 21]], 200), sink)])
    loop.abort("long")
    gate.set()
    loop.submit([("after", request(), Sink())])
    deadline = threading.Event()
    for _ in range(600):
        if loop.engine.blocks.num_free_blocks == loop.engine.blocks.num_blocks and not loop.engine.has_unfinished_requests():
            break
        deadline.wait(0.05)
    assert loop.engine.blocks.num_free_blocks == loop.engine.blocks.num_blocks


def test_after_stop_admitting_submissions_are_refused():
    running = EngineLoop(engine(), max_waiting=4)
    running.start()
    running.stop_admitting()
    with pytest.raises(Draining):
        running.submit([("late", request(), Sink())])
    running.stop()


def test_stop_fails_what_is_still_held():
    running = EngineLoop(engine(), max_waiting=4)
    gate, _ = gated(running)
    running.start()
    sink = Sink()
    running.submit([("held", Request([5, 6], [[20, 21]], 200), sink)])
    stopper = threading.Thread(target=running.stop)
    stopper.start()
    gate.set()
    stopper.join(TIMEOUT)
    assert isinstance(sink.result(), RuntimeError)
    assert running.engine.blocks.num_free_blocks == running.engine.blocks.num_blocks


# ---- text ---------------------------------------------------------------------------------------


class Pieces:
    """A tokenizer whose token i decodes to PIECES[i] (bytes joined, then decoded as UTF-8)."""

    PIECES = [b"Hel", b"lo", b" wo", b"rld", b"\xe2\x82", b"\xac", b"!", b"EN", b"D"]

    def decode(self, ids, skip_special_tokens=True):
        return b"".join(self.PIECES[i] for i in ids).decode("utf-8", errors="replace")


def feed(stream: TextStream, ids) -> list[str]:
    return [stream.add([i]) for i in ids]


def test_text_arrives_as_it_is_decoded():
    stream = TextStream(Pieces(), [])
    assert feed(stream, [0, 1, 2, 3]) == ["Hel", "lo", " wo", "rld"]
    assert stream.finish() == ""


def test_a_partial_character_is_held_back():
    stream = TextStream(Pieces(), [])
    assert feed(stream, [0, 4, 5, 6]) == ["Hel", "", "\u20ac", "!"]


def test_a_stop_string_across_tokens_is_cut_and_never_sent():
    stream = TextStream(Pieces(), ["o world"])
    sent = feed(stream, [0, 1, 2, 3, 6])
    assert "".join(sent) == "Hell" and stream.stopped and stream.text == "Hell"
    assert sent == ["Hel", "l", "", "", ""]  # "o" and " wo" held: they begin the stop string


def test_a_held_back_prefix_that_does_not_stop_is_sent_later():
    stream = TextStream(Pieces(), ["lo!"])
    assert feed(stream, [0, 1, 2]) == ["He", "l", "lo wo"]  # "l", then "lo", could begin "lo!"
    assert not stream.stopped and stream.finish() == ""


def test_the_first_of_several_stop_strings_wins():
    stream = TextStream(Pieces(), ["rld", "lo"])
    feed(stream, [0, 1, 2, 3])
    assert stream.text == "Hel" and stream.stopped


def test_finish_flushes_what_was_held():
    stream = TextStream(Pieces(), ["END!"])
    assert feed(stream, [0, 7, 8]) == ["Hel", "", ""]
    assert stream.finish() == "END"
