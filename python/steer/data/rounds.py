"""Sample attempts whose negatives and acceptance do not depend on who runs them or when they end.

A dataset run is a sequence of attempts k = 0, 1, 2, ...: attempt k is seeded with the run's
seed + k and belongs to round ``k // round_size``. Its negative examples are drawn, by a generator
keyed by (run seed, k), from a *snapshot* of the pool: the real examples, then the samples
accepted from every round up to ``r - 2`` (bounded staleness: a sample never sees the samples of
its own round or the one before, and always sees all the others). With ``share`` = K > 1, the K
attempts of a share group (k // K) all take the draw of its first attempt, from that attempt's
snapshot, so their negative contexts are one cached prefix. Finished attempts are accepted
or rejected (empty, a repeat) in attempt order, and the accepted ones are numbered in that order.

So the records of a run are a function of its settings alone: one engine or many workers, any
completion order, killed and resumed or not, the same attempts draw the same negatives and the
same samples get the same ids. Two rounds can be in flight at once (round r may start when round
r - 2 is accepted), which keeps the decoders busy while the oldest round finishes.

``RoundPlanner`` holds that state: ``next_attempts`` hands out the attempts that may start,
``complete`` takes a finished one (in any order; a repeat of an attempt already taken is ignored,
so an attempt redone after a lost worker counts once) and returns the samples newly accepted, in
order. A resumed run builds its planner from the records already written.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field

ROUND_SIZE = 64  # attempts per round by default (steer generate uses its --pool-round, default the batch size)
_KEY_MIX = 0x9E3779B97F4A7C15  # spreads (run seed, attempt) over the generator's seed space


@dataclass(frozen=True)
class Attempt:
    index: int  # k
    seed: int  # run seed + k
    negatives: tuple[int, ...]  # pool indices drawn (into the planner's examples)


@dataclass
class Accepted:
    attempt: Attempt
    token_ids: list[int]
    text: str
    pool_index: int  # where the sample now sits in the pool


@dataclass
class _Round:
    issued: int = 0
    done: int = 0


@dataclass
class RoundPlanner:
    """``examples``: the real examples' token ids (pool entries 0..), then, for a resumed run, the
    accepted samples already written, with ``accepted_attempts`` their attempt indices (in order).
    ``accept(token_ids) -> (text, pool example) or None`` decides a finished attempt (None:
    rejected; the example is what joins the pool, e.g. the tokens cut to a length budget); it is
    called in attempt order. ``target``: how many accepted samples the run needs in all."""

    examples: list[list[int]]
    run_seed: int
    num_negatives: int
    target: int
    accept: object
    accepted_attempts: list[int] = field(default_factory=list)
    round_size: int = ROUND_SIZE
    share: int = 1  # consecutive attempts that take one draw

    def __post_init__(self) -> None:
        if self.round_size < 1:
            raise ValueError(f"round_size must be >= 1, got {self.round_size}")
        if self.share < 1:
            raise ValueError(f"share must be >= 1, got {self.share}")
        self.num_real = len(self.examples) - len(self.accepted_attempts)
        if self.num_real < 1:
            raise ValueError("the pool needs at least one real example")
        if any(b <= a for a, b in zip(self.accepted_attempts, self.accepted_attempts[1:])):
            raise ValueError("accepted_attempts must increase: samples are accepted in attempt order")
        # Attempts below next_to_accept are decided; a resumed run continues after its last record.
        self.next_to_accept = self.accepted_attempts[-1] + 1 if self.accepted_attempts else 0
        self.next_to_issue = self.next_to_accept
        self._finished: dict[int, list[int]] = {}  # attempt -> tokens, not yet decided
        self._issued: dict[int, Attempt] = {}  # handed out, not yet decided
        self._retry: list[Attempt] = []  # lost: to hand out again first

    # -- the pool snapshot of a round ---------------------------------------------------------------

    def _snapshot_size(self, round_index: int) -> int:
        """Pool entries a round-``round_index`` attempt draws from: the real examples and the
        samples accepted from rounds <= round_index - 2."""
        limit = (round_index - 1) * self.round_size  # attempts below this are in rounds <= r - 2
        return self.num_real + bisect.bisect_left(self.accepted_attempts, limit)

    def _round_available(self, round_index: int) -> bool:
        """Round r may start once every attempt of rounds <= r - 2 is decided."""
        return self.next_to_accept >= (round_index - 1) * self.round_size

    # -- handing out and taking back -----------------------------------------------------------------

    @property
    def accepted(self) -> int:
        return len(self.accepted_attempts)

    @property
    def done(self) -> bool:
        return self.accepted >= self.target

    def in_flight(self) -> int:
        return len(self._issued)

    def next_attempts(self, limit: int) -> list[Attempt]:
        """Up to ``limit`` attempts that may start now: lost ones first (same draws), then new ones
        whose round's snapshot is complete, while the run could still need them (accepted + in
        flight < target)."""
        out = self._retry[:limit]
        self._retry = self._retry[limit:]
        while len(out) < limit and not self.done and self.accepted + len(self._issued) < self.target:
            index = self.next_to_issue
            round_index = index // self.round_size
            if not self._round_available(round_index):
                break
            leader = index - index % self.share  # the share group's first attempt draws for all of it
            attempt = Attempt(index, self.run_seed + index, self._draw(leader, self._snapshot_size(leader // self.round_size)))
            self._issued[index] = attempt
            self.next_to_issue += 1
            out.append(attempt)
        return out

    def _draw(self, index: int, size: int) -> tuple[int, ...]:
        if self.num_negatives == 0:
            return ()
        rng = random.Random((self.run_seed * _KEY_MIX + index) % 2**64)
        return tuple(rng.sample(range(size), min(self.num_negatives, size)))

    def lost(self, attempts) -> None:
        """Attempts that will not finish (their worker died): ``next_attempts`` hands them out
        again, first, with the same draws."""
        waiting = {a.index for a in self._retry}
        for attempt in attempts:
            if attempt.index in self._issued and attempt.index not in self._finished and attempt.index not in waiting:
                self._retry.append(attempt)
                waiting.add(attempt.index)

    def complete(self, attempt: Attempt, token_ids: list[int]) -> list[Accepted]:
        """A finished attempt; returns the samples accepted by it (in attempt order: it may
        release later ones that finished first). A repeat or an unknown attempt is ignored."""
        if attempt.index not in self._issued or attempt.index in self._finished:
            return []
        self._finished[attempt.index] = list(token_ids)
        accepted = []
        while self.next_to_accept in self._finished and not self.done:
            index = self.next_to_accept
            tokens = self._finished.pop(index)
            decided = self._issued.pop(index)
            verdict = self.accept(tokens)
            if verdict is not None:
                text, example = verdict
                self.examples.append(list(example))
                self.accepted_attempts.append(index)
                accepted.append(Accepted(decided, tokens, text, len(self.examples) - 1))
            self.next_to_accept += 1
        if self.done:  # the rest will never be needed
            self._finished.clear()
            self._issued.clear()
            self._retry.clear()
        return accepted
