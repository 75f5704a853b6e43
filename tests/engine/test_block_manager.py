"""The block manager alone: no torch, no model."""

import pytest

from steer.engine.block_manager import BlockManager, OutOfBlocks


def test_allocate_and_free_return_every_block():
    manager = BlockManager(num_blocks=10, block_size=4)
    table = manager.allocate("expert", list(range(10)))
    assert len(table.block_ids) == 3 and table.num_tokens == 10 and table.num_cached_tokens == 0
    assert manager.num_free_blocks == 7
    manager.free(table)
    assert manager.num_free_blocks == 10


def test_identical_prefixes_share_full_blocks_only():
    manager = BlockManager(num_blocks=20, block_size=4)
    prompt = list(range(10))  # two full blocks and a partial one
    first = manager.allocate("expert", prompt)
    second = manager.allocate("expert", prompt)
    assert first.block_ids[:2] == second.block_ids[:2]
    assert first.block_ids[2] != second.block_ids[2]
    assert second.num_cached_tokens == 8
    assert manager.num_used_blocks == 4


def test_namespaces_do_not_share():
    manager = BlockManager(num_blocks=20, block_size=4)
    expert = manager.allocate("expert", list(range(8)))
    base = manager.allocate("base", list(range(8)))
    assert not set(expert.block_ids) & set(base.block_ids)


def test_a_different_earlier_block_breaks_sharing():
    manager = BlockManager(num_blocks=20, block_size=2)
    manager.allocate("expert", [1, 2, 3, 4])
    other = manager.allocate("expert", [9, 9, 3, 4])  # same second block, different prefix
    assert other.num_cached_tokens == 0


def test_append_takes_a_block_at_the_boundary_and_registers_full_blocks():
    manager = BlockManager(num_blocks=10, block_size=4)
    tokens = [1, 2, 3]
    table = manager.allocate("expert", tokens)
    for token in [4, 5]:
        tokens.append(token)
        manager.append(table, tokens)
    assert table.num_tokens == 5 and len(table.block_ids) == 2
    again = manager.allocate("expert", [1, 2, 3, 4, 6])
    assert again.block_ids[0] == table.block_ids[0] and again.num_cached_tokens == 4


def test_freed_blocks_stay_findable_until_reused():
    manager = BlockManager(num_blocks=4, block_size=2)
    table = manager.allocate("expert", [1, 2, 3, 4])
    blocks = list(table.block_ids)
    manager.free(table)
    assert table.block_ids == [] and manager.num_free_blocks == 4
    again = manager.allocate("expert", [1, 2, 3, 4])
    assert again.num_cached_tokens == 4 and again.block_ids == blocks
    manager.free(again)
    manager.allocate("base", [5, 6, 7, 8, 9, 10, 11, 12])  # takes every block: the old keys are gone
    assert manager.new_blocks_needed("expert", [1, 2, 3, 4]) == 2


def test_out_of_blocks_is_atomic():
    manager = BlockManager(num_blocks=3, block_size=2)
    manager.allocate("expert", [1, 2, 3])
    with pytest.raises(OutOfBlocks):
        manager.allocate("expert", [7, 8, 9, 10, 11])
    assert manager.num_free_blocks == 1


def test_new_blocks_needed_counts_shared_blocks_as_free():
    manager = BlockManager(num_blocks=10, block_size=4)
    manager.allocate("expert", list(range(8)))
    assert manager.new_blocks_needed("expert", list(range(8)) + [50]) == 1
    assert manager.new_blocks_needed("base", list(range(8))) == 2


def test_eight_samples_of_one_prompt_use_under_sixty_percent_of_unshared_blocks():
    """The acceptance figure of the engine issue, for the block layer: 8 samples of one prompt,
    each with an expert prompt stream, a base stream and one negative stream of its own."""
    block_size, prompt = 16, list(range(200))
    manager = BlockManager(num_blocks=1000, block_size=block_size)
    unshared = 0
    for sample in range(8):
        negative = [1000 + sample * 50 + i for i in range(40)]
        for namespace, tokens in (("expert", prompt), ("base", prompt), ("expert", negative)):
            manager.allocate(namespace, tokens)
            unshared += manager.blocks_needed(len(tokens))
    assert manager.num_used_blocks < 0.6 * unshared


def test_a_rolled_back_allocation_leaves_no_cached_prefix_behind():
    manager = BlockManager(num_blocks=10, block_size=2)
    table = manager.allocate("expert", [1, 2, 3, 4])
    manager.free(table, computed=False)
    assert manager.allocate("expert", [1, 2, 3, 4]).num_cached_tokens == 0


def test_a_whole_allocation_caches_its_partial_last_block_for_whole_allocations_only():
    manager = BlockManager(num_blocks=20, block_size=4)
    chunk = list(range(10))  # two full blocks and a partial one
    table = manager.allocate("expert:chunk", chunk, whole=True)
    first = list(table.block_ids)
    manager.free(table)  # its blocks stay findable, the partial one included
    again = manager.allocate("expert:chunk", chunk, whole=True)
    assert again.block_ids == first and again.num_cached_tokens == 10  # not 12: capped at the tokens
    assert manager.cached_prefix_tokens("expert:chunk", chunk, whole=True) == 10
    plain = manager.allocate("expert:chunk", chunk)  # a growing stream never takes a partial block it would append to
    assert plain.num_cached_tokens == 8 and plain.block_ids[:2] == first[:2] and plain.block_ids[2] != first[2]
    longer = manager.allocate("expert:chunk", chunk + [99], whole=True)  # other tokens in the last block: its own
    assert longer.num_cached_tokens == 8 and longer.block_ids[2] not in (first[2], plain.block_ids[2])
    assert manager.new_blocks_needed("expert:chunk", chunk, whole=True) == 0
