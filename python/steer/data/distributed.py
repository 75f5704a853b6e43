"""``steer generate --workers N``: the run's attempts decoded by N engine replicas on Ray.

The driver (the ``steer generate`` process) keeps everything that makes the output exactly-once:
the round planner, the one negative pool, the acceptance in attempt order and the one writer
(``RoundRun``, as a single-process run). The workers are Ray actors, each with its own engine
(``--threads-per-worker`` CPU threads, or ``--gpus-per-worker`` GPUs), that only decode: the
driver hands each up to ``--batch-size`` attempts (engine requests with their negatives already
drawn) and calls ``advance``, which adds them to the engine, steps it until a request finishes,
and returns the finished ones. Each worker has one call in flight at a time, so its batch stays
full; the rounds keep two rounds' attempts available, so ``--pool-round`` should be at least
``workers x batch size / 2`` for every worker to stay busy.

A worker that dies (SIGKILL, a lost node) fails its call, or (a call sent while Ray restarts
it) answers that it does not hold what the driver gave it: either way its attempts go back to the
planner, which hands them out again first with the same draws, and Ray restarts the actor. Since the
records are a function of the settings alone (steer.data.rounds), a run on N workers writes the
same records as on one worker or in one process, and a killed driver resumes with ``--resume``.
A local Ray cluster is started for the run unless ``--ray-address`` names one.
"""

from __future__ import annotations

import os
import time

from steer.data.io import DataError


def require_ray():
    """The ray module, or a DataError saying what to install."""
    try:
        import ray
    except ImportError:
        raise DataError('--workers runs on Ray, which is not installed: pip install -e ".[ray]"') from None
    return ray


class DecodeWorker:
    """One engine replica (a Ray actor): decodes the requests the driver hands it."""

    def __init__(self, plan, threads: int | None) -> None:
        import torch

        from steer.data.generate import build_engine

        if threads is not None:
            torch.set_num_threads(threads)
        self.engine = build_engine(plan)
        self.active: set[int] = set()  # attempt indices added and not finished

    def pid(self) -> int:
        return os.getpid()

    def advance(self, items: list[tuple[int, object]], holding: list[int] = (), max_steps: int = 64):
        """Add ``items`` (attempt index, engine Request), then step until a request finishes (or
        ``max_steps``). Returns (finished, missing): the finished ones as (attempt index, token
        ids, finish reason), and those of ``holding`` (what the driver believes this worker holds
        from earlier calls) that it does not hold: a restarted actor lost them, and a call
        queued while Ray restarted it runs here rather than failing, so the driver learns of the
        loss from this answer."""
        from steer.data.generate import finished_outputs

        engine = self.engine
        missing = [index for index in holding if index not in self.active]
        for index, request in items:
            engine.add_request(request, request_id=index)
            self.active.add(index)
        finished = []
        for _ in range(max_steps):
            if not engine.has_unfinished_requests():
                break
            finished += [(o.request_id, o.token_ids, o.finish_reason) for o in finished_outputs(engine)]
            if finished:
                break
        self.active.difference_update(index for index, _, _ in finished)
        return finished, missing


def decode_on_ray(plan, run, *, workers: int, address: str | None, threads_per_worker: int | None,
                  gpus_per_worker: float, notice=None) -> dict:  # fmt: skip
    """Drive ``run`` (a RoundRun) to the end on ``workers`` Ray actors; per-worker statistics."""
    ray = require_ray()
    stop = _init(ray, workers=workers, address=address, threads_per_worker=threads_per_worker, gpus_per_worker=gpus_per_worker)
    try:
        return _drive(ray, plan, run, workers, threads_per_worker, gpus_per_worker)
    finally:
        stop()


def _init(ray, *, workers: int, address, threads_per_worker, gpus_per_worker):
    """Connect to Ray (a local cluster sized for the workers unless ``address``), unless this
    process already is; returns what undoes it."""
    if ray.is_initialized():
        return lambda: None
    options = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address is None:
        options["num_cpus"] = max(1, workers * (threads_per_worker or 1))
        options["num_gpus"] = int(round(workers * gpus_per_worker)) if gpus_per_worker else 0
    ray.init(address=address, **options)
    return ray.shutdown


def start_ray(request):
    """Ray for several runs of one command (steer sweep's cells); returns what stops it."""
    return _init(require_ray(), workers=request.workers, address=request.ray_address,
                 threads_per_worker=request.threads_per_worker, gpus_per_worker=request.gpus_per_worker)  # fmt: skip


def _drive(ray, plan, run, workers: int, threads: int | None, gpus: float) -> dict:
    actor_class = ray.remote(DecodeWorker).options(
        num_cpus=threads or 1, num_gpus=gpus or 0, max_restarts=-1, max_task_retries=0,
    )  # fmt: skip
    actors = [actor_class.remote(plan, threads) for _ in range(workers)]
    capacity = max(1, plan.request.batch_size)
    held: list[dict[int, object]] = [{} for _ in actors]  # per worker: attempt index -> attempt
    calls: dict[object, int] = {}  # outstanding call -> worker
    stats = [{"samples": 0, "lost": 0, "started": time.perf_counter()} for _ in actors]

    def call(worker: int) -> None:
        holding = list(held[worker])
        new = run.next_attempts(capacity - len(held[worker])) if not run.done else []
        for attempt in new:
            held[worker][attempt.index] = attempt
        if held[worker]:
            ref = actors[worker].advance.remote([(a.index, run.request_of(a)) for a in new], holding)
            calls[ref] = worker

    def lose(worker: int, indices) -> None:
        attempts = [held[worker].pop(index) for index in indices if index in held[worker]]
        run.lost(attempts)  # redone with the same draws, by whoever is free
        stats[worker]["lost"] += len(attempts)

    for worker in range(workers):
        call(worker)
    while not run.done:
        if not calls:
            raise RuntimeError("no worker has anything to decode while the run is not done")  # a bug of ours
        ready, _ = ray.wait(list(calls), num_returns=1)
        worker = calls.pop(ready[0])
        try:
            finished, missing = ray.get(ready[0])
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError):
            finished, missing = [], list(held[worker])
        lose(worker, missing)
        run.prepare([(tokens, reason) for index, tokens, reason in finished if index in held[worker]])
        for index, tokens, reason in finished:
            attempt = held[worker].pop(index, None)
            if attempt is not None:
                run.finished(attempt, tokens, reason)
                stats[worker]["samples"] += 1
        for other in range(workers):  # the lost attempts, and newly available rounds, to the idle
            if other == worker or (not held[other] and other not in calls.values()):
                call(other)
    for ref in calls:  # the rest is not needed (the run has its n samples)
        ray.cancel(ref, force=False)
    return {"workers": [{"decoded": s["samples"], "lost": s["lost"],
                         "seconds": time.perf_counter() - s["started"]} for s in stats]}  # fmt: skip
