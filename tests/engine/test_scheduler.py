"""The scheduler over the block manager, with a fake decode loop (no model)."""

import pytest

from steer.engine.block_manager import BlockManager
from steer.engine.scheduler import Scheduler
from steer.engine.sequence import Request, SampleGroup


def group(group_id, prompt_len=6, negatives=((50, 51, 52),), max_new_tokens=8, eos=None):
    request = Request(list(range(1, prompt_len + 1)), [list(n) for n in negatives], max_new_tokens, eos_token_id=eos, gamma=0.5, eta=0.5)
    return SampleGroup.for_request(group_id, request, request_id=group_id)


def admitted(scheduler):
    """The groups a schedule() admits now (the plan's prefilling tail)."""
    plan = scheduler.schedule()
    return plan.groups[len(plan.groups) - plan.num_prefilling :]


def run_to_completion(scheduler, groups, token_of=lambda g: 7, max_steps=10_000):
    """Schedule, 'run', postprocess one token per planned group until all finish."""
    finished, peak_used = [], 0
    for g in groups:
        scheduler.add(g)
    for _ in range(max_steps):
        if not scheduler.has_work:
            break
        plan = scheduler.schedule()
        peak_used = max(peak_used, scheduler.blocks.num_used_blocks)
        finished += scheduler.postprocess(plan.groups, [token_of(g) for g in plan.groups])
    return finished, peak_used


def test_every_group_completes_under_memory_pressure():
    manager = BlockManager(num_blocks=12, block_size=4)
    scheduler = Scheduler(manager, max_rows=64)
    groups = [group(i) for i in range(10)]
    finished, peak = run_to_completion(scheduler, groups)
    assert sorted(g.group_id for g in finished) == list(range(10))
    assert all(len(g.generated) == 8 and g.finish_reason == "length" for g in finished)
    assert peak <= 12 and manager.num_free_blocks == 12


def test_eos_finishes_early():
    scheduler = Scheduler(BlockManager(num_blocks=40, block_size=4), max_rows=8)
    finished, _ = run_to_completion(scheduler, [group(0, eos=7)])
    assert finished[0].finish_reason == "eos" and finished[0].generated == [7]


def test_a_group_that_can_never_fit_is_refused_clearly():
    scheduler = Scheduler(BlockManager(num_blocks=4, block_size=4), max_rows=8)
    with pytest.raises(ValueError, match="needs 11 KV blocks at its longest"):
        scheduler.add(group(0, prompt_len=6, max_new_tokens=8))


def test_rows_budget_limits_the_batch():
    scheduler = Scheduler(BlockManager(num_blocks=400, block_size=4), max_rows=7)
    for i in range(4):
        scheduler.add(group(i))  # 3 streams each
    assert len(admitted(scheduler)) == 2
    with pytest.raises(ValueError, match="streams but a step holds"):
        scheduler.add(group(9, negatives=((1,), (2,), (3,), (4,), (5,), (6,))))


def test_prompt_blocks_are_shared_across_groups_of_one_prompt():
    manager = BlockManager(num_blocks=400, block_size=4)
    scheduler = Scheduler(manager, max_rows=64)
    for i in range(8):
        scheduler.add(group(i, prompt_len=40, negatives=((100 + i, 101, 102),)))
    scheduler.schedule()
    unshared = 8 * (manager.blocks_needed(40) * 2 + 1)
    assert manager.num_used_blocks < 0.6 * unshared


def test_request_validation():
    with pytest.raises(ValueError, match="prompt_ids is empty"):
        Request([], [[1]], 4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        Request([1], [[1]], 0)
    with pytest.raises(ValueError, match="min_new_tokens"):
        Request([1], [[1]], 4, min_new_tokens=5)
    with pytest.raises(ValueError, match="negative_ids\\[1\\]"):
        Request([1], [[1], []], 4)
    with pytest.raises(ValueError, match="no negative_ids"):
        SampleGroup.for_request(0, Request([1], [], 4, eta=0.5))


def step(scheduler):
    """One step with a made-up token; the plan's groups admitted now."""
    plan = scheduler.schedule()
    scheduler.postprocess(plan.groups, [7] * len(plan.groups))
    return [g.group_id for g in plan.groups[len(plan.groups) - plan.num_prefilling :]]


def test_the_token_budget_limits_prefill_per_step_but_a_large_group_still_runs_alone():
    manager = BlockManager(num_blocks=200, block_size=4)
    scheduler = Scheduler(manager, max_rows=64, max_tokens=20)
    small = [group(i, prompt_len=3, negatives=((50,),)) for i in range(4)]  # 3 + 3 + 1 = 7 tokens each
    large = group(9, prompt_len=30)  # 30 + 30 + 3 tokens
    for g in small + [large]:
        scheduler.add(g)
    assert step(scheduler) == [0, 1]  # 14 <= 20 < 21
    assert step(scheduler) == [2, 3]  # 6 decode rows + 7 + 7 = 20
    assert step(scheduler) == []  # the large group waits while others decode ...
    finished, _ = run_to_completion(scheduler, [])
    assert finished[-1] is large  # ... and then runs alone
    assert sorted(g.group_id for g in finished) == [0, 1, 2, 3, 9]


def test_the_token_budget_counts_cached_prefixes_as_free():
    manager = BlockManager(num_blocks=200, block_size=4)
    scheduler = Scheduler(manager, max_rows=64, max_tokens=40)
    first, second = group(0, prompt_len=16, negatives=((50,),)), group(1, prompt_len=16, negatives=((51,),))
    scheduler.add(first)
    assert step(scheduler) == [0]  # 16 + 16 + 1 = 33 tokens
    scheduler.add(second)
    # 3 decode rows; the prompt and base streams' 4 full blocks are cached: 1 + 1 + 1 new tokens.
    assert step(scheduler) == [1]


@pytest.mark.parametrize("computed", [True, False])
def test_release_all_gives_back_every_block_and_keeps_the_prefix_only_if_computed(computed):
    manager = BlockManager(num_blocks=60, block_size=4)
    scheduler = Scheduler(manager, max_rows=6)
    groups = [group(i, prompt_len=9) for i in range(3)]  # 3 streams each: two run, one waits
    for g in groups:
        scheduler.add(g)
    assert len(admitted(scheduler)) == 2
    assert manager.num_used_blocks > 0 and len(scheduler.waiting) == 1
    scheduler.release_all(computed=computed)
    assert manager.num_free_blocks == 60 and not scheduler.has_work
    assert all(s.table is None for g in groups for s in g.streams)
    assert manager.cached_prefix_tokens("expert", list(range(1, 10))) == (8 if computed else 0)


def test_abort_frees_a_running_or_waiting_group_at_once():
    manager = BlockManager(num_blocks=60, block_size=4)
    scheduler = Scheduler(manager, max_rows=6)
    groups = [group(i, prompt_len=9) for i in range(3)]
    for g in groups:
        scheduler.add(g)
    step(scheduler)
    scheduler.abort(groups[2])  # waiting
    scheduler.abort(groups[0])  # running
    assert groups[0].finish_reason == "abort" and groups[2].finish_reason == "abort"
    assert scheduler.running == [groups[1]] and not scheduler.waiting
    assert manager.num_used_blocks == sum(len(s.table.block_ids) for s in groups[1].streams)
    finished, _ = run_to_completion(scheduler, [])
    assert finished == [groups[1]] and manager.num_free_blocks == 60


def test_the_plan_says_what_each_stream_computes():
    manager = BlockManager(num_blocks=60, block_size=4)
    scheduler = Scheduler(manager, max_rows=64)
    scheduler.add(group(0, prompt_len=9))
    plan = scheduler.schedule()
    assert [s.num_new for s in plan.groups[0].streams] == [9, 3, 9] and plan.max_new_tokens == 9
    scheduler.postprocess(plan.groups, [7])
    scheduler.add(group(1, prompt_len=9, negatives=((60, 61),)))
    plan = scheduler.schedule()
    # group 0 decodes one token per stream; group 1's prompt and base find 8 tokens cached
    assert [[s.num_new for s in g.streams] for g in plan.groups] == [[1, 1, 1], [1, 2, 1]]
