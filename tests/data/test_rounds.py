"""steer.data.rounds: a run's accepted samples are a function of its settings, not of how many
decoders ran it, in what order attempts finished, which were lost and redone, or whether it was
killed and resumed."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steer.data.rounds import RoundPlanner

REAL = [[100 + i] for i in range(7)]


def decode(attempt, examples) -> list[int]:
    """A stand-in decoder: the tokens follow from the seed and the negatives drawn (small range,
    so that repeats and empty samples happen and get rejected)."""
    rng = random.Random(attempt.seed * 31 + sum(examples[i][0] for i in attempt.negatives))
    return [rng.randrange(6) for _ in range(rng.randrange(3))]


def acceptor():
    seen = set()

    def accept(tokens):
        text = " ".join(map(str, tokens))
        if not tokens or text in seen:
            return None
        seen.add(text)
        return text, tokens

    return accept, seen


def planner(target, round_size, *, examples=None, accepted_attempts=(), seen=None, share=1):
    accept, fresh = acceptor()
    if seen is not None:
        fresh.update(seen)
    plan = RoundPlanner([list(e) for e in (examples or REAL)], run_seed=11, num_negatives=3, target=target,
                        accept=accept, accepted_attempts=list(accepted_attempts), round_size=round_size, share=share)  # fmt: skip
    return plan, fresh


def sequential(target, round_size, share=1):
    """One attempt at a time, in order: the reference."""
    plan, _ = planner(target, round_size, share=share)
    out = []
    while not plan.done:
        (attempt,) = plan.next_attempts(1)
        out += [(a.attempt.index, a.attempt.negatives, a.token_ids) for a in plan.complete(attempt, decode(attempt, plan.examples))]
    return out


@settings(max_examples=200, deadline=None)
@given(
    target=st.integers(1, 40), round_size=st.integers(1, 9), capacity=st.integers(1, 30),
    seed=st.integers(0, 2**32), loss=st.floats(0, 0.3), kill=st.floats(0, 0.1), share=st.sampled_from([1, 1, 2, 3, 8]),
)  # fmt: skip
def test_any_schedule_gives_the_sequential_records(target, round_size, capacity, seed, loss, kill, share):
    rng = random.Random(seed)
    want = sequential(target, round_size, share)
    assert len(want) == target
    plan, seen = planner(target, round_size, share=share)
    got, running = [], []
    while not plan.done:
        running += plan.next_attempts(capacity - len(running))
        assert running, "nothing may run, yet the run is not done"
        attempt = running.pop(rng.randrange(len(running)))  # any completion order
        if rng.random() < loss:  # its worker died: redone later, same draws
            plan.lost([attempt])
            continue
        tokens = decode(attempt, plan.examples)
        got += [(a.attempt.index, a.attempt.negatives, a.token_ids) for a in plan.complete(attempt, tokens)]
        if rng.random() < 0.1:
            plan.complete(attempt, tokens)  # a duplicate report: ignored
        if rng.random() < kill and not plan.done:  # the driver dies: resume from what was written
            plan, seen = planner(target, round_size, examples=REAL + [t for _, _, t in got],
                                 accepted_attempts=[i for i, _, _ in got], seen=seen, share=share)  # fmt: skip
            running = []
    assert got == want


def test_draws_see_exactly_the_rounds_up_to_two_before():
    plan, _ = planner(target=1000, round_size=4)
    attempts = {}
    for _ in range(40):
        batch = plan.next_attempts(100)
        for attempt in batch:
            attempts[attempt.index] = attempt
        for attempt in batch:  # finish each batch whole, in order
            plan.complete(attempt, [attempt.index])  # every sample distinct: all accepted
    for index, attempt in attempts.items():
        round_index = index // 4
        visible = len(REAL) + max(0, (round_index - 1) * 4)  # real + every attempt of rounds <= r - 2
        assert all(i < visible for i in attempt.negatives), (index, attempt.negatives)
    # with every attempt accepted, round 5 draws from real + rounds 0..3
    assert plan._snapshot_size(5) == len(REAL) + 16


@pytest.mark.parametrize("share, round_size", [(4, 4), (4, 3), (3, 8)])
def test_a_share_group_takes_its_first_attempts_draw(share, round_size):
    plan, _ = planner(target=1000, round_size=round_size, share=share)
    unshared, _ = planner(target=1000, round_size=round_size)
    attempts, leaders = {}, {}
    for _ in range(20):
        batch, alone = plan.next_attempts(100), unshared.next_attempts(100)
        for attempt, own in zip(batch, alone):
            attempts[attempt.index] = attempt
            if attempt.index % share == 0:
                leaders[attempt.index] = attempt
                assert attempt.negatives == own.negatives  # the leader draws as without sharing
        for planner_, done in ((plan, batch), (unshared, alone)):
            for attempt in done:
                planner_.complete(attempt, [attempt.index])
    for index, attempt in attempts.items():
        assert attempt.negatives == leaders[index - index % share].negatives
        assert attempt.seed == 11 + index  # seeds stay per sample
    assert len({a.negatives for a in leaders.values()}) > len(leaders) // 2


def test_at_most_two_rounds_are_in_flight():
    plan, _ = planner(target=100, round_size=5)
    first = plan.next_attempts(100)
    assert [a.index for a in first] == list(range(10))  # rounds 0 and 1; round 2 waits for round 0
    for attempt in first[:4]:
        plan.complete(attempt, [attempt.index])
    assert plan.next_attempts(100) == []
    plan.complete(first[4], [4])
    assert [a.index for a in plan.next_attempts(100)] == list(range(10, 15))


def test_no_more_attempts_than_the_target_needs_are_handed_out():
    plan, _ = planner(target=3, round_size=64)
    assert len(plan.next_attempts(100)) == 3
    assert plan.next_attempts(100) == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="round_size"):
        planner(3, 0)
    with pytest.raises(ValueError, match="share"):
        planner(3, 4, share=0)
    with pytest.raises(ValueError, match="increase"):
        planner(3, 4, examples=REAL + [[1], [2]], accepted_attempts=[5, 2])
