import pytest
import torch

from steer.engine.pool import NegativePool


def test_draws_distinct_examples_and_joins_them_in_concat_mode():
    pool = NegativePool([[1, 2], [3], [4, 5, 6]], seed=0, prefix=[0], separator=[9, 0], suffix=[9, 0])
    indices = pool.draw(2)
    assert len(set(indices)) == 2
    (joined,) = pool.negative_streams(indices, "concat")
    first, second = (pool.examples[i] for i in indices)
    assert joined == [0] + first + [9, 0] + second + [9, 0]
    assert pool.negative_streams(indices, "separate") == [[0] + first + [9, 0], [0] + second + [9, 0]]
    assert sorted(pool.draw(10)) == [0, 1, 2]


def test_finished_samples_join_the_pool():
    pool = NegativePool([[1]], seed=0)
    assert pool.add([7, 8]) == 1 and pool.add([]) == -1 and len(pool) == 2


def test_bad_pools_are_refused():
    with pytest.raises(ValueError, match="at least one example"):
        NegativePool([])
    with pytest.raises(ValueError, match="example 1 is empty"):
        NegativePool([[1], []])


@pytest.mark.parametrize("examples, message", [
    ([[1, 2], [3, 4.5]], r"pool example 1\[1\] = 4.5 \(float\) is not an int token id"),
    ([[1, True]], r"pool example 0\[1\] = True \(bool\)"),
    ([[-1]], r"pool example 0\[0\] = -1"),
])
def test_a_bad_pool_example_is_named_where_it_enters(examples, message):
    with pytest.raises(ValueError, match=message):
        NegativePool(examples)


def test_a_bad_sample_added_to_the_pool_is_named():
    pool = NegativePool([[1, 2]])
    with pytest.raises(ValueError, match=r"pool example 1\[0\] = 'x'"):
        pool.add(["x"])
    assert pool.add(torch.tensor([5, 6])) == 1 and pool.examples[1] == [5, 6]
