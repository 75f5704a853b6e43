"""The C++ CPU paged attention kernel (csrc/cpu/paged_attention.cpp, ``steer._C.paged_attention``)
through ``steer.ops.attention.paged_attention(..., backend="cpp")``, against the op's definition,
``paged_attention_reference``, run in float64 on the same inputs.

Ragged batches mix decode rows (n_r = 1), prefill rows (n_r = c_r), prefix-hit rows
(1 < n_r < c_r), rows with no new token and a row of context 1, over GQA ratios 1 / 2 / 4 / 8,
block sizes 1 / 4 / 16 / 32, head dims 56 / 64 / 128 (and odd ones), sliding windows (none, 1, 7,
wider than every context), soft caps, float32 / float16 / bfloat16 q and pools (and q of another
dtype than the pool), strided q and out, a pool whose kv heads are not adjacent, the rounding of
half-precision outputs, thread-count independence and the contract violations the kernel rejects
(ValueError). Every pool slot outside the rows' contexts, the block that
padding table entries name, and the tokens of q outside every row hold NaN; with a window, so do
the keys before each row's first window and the table entries of the blocks wholly before it
(an engine may free those blocks); out holds a sentinel where nothing may be written. Reading or
writing any of them shows. A hypothesis test draws small random batches.
"""

import math

import pytest
import torch

from steer.ops import attention as ops
from steer.ops import compiled

if not (compiled.extension_imports("steer._C") and hasattr(compiled.extension("steer._C"), "paged_attention")):
    pytest.skip("steer._C has no paged_attention (rebuild the extension)", allow_module_level=True)

TOLERANCE = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
SENTINEL = 7.0  # what out holds where nothing may be written

# (n_r new tokens, c_r context): decode rows, prefills (one over several query tiles), prefix hits
# (one over several key tiles), a row with no new token, context 1.
MIXED = [(1, 23), (40, 40), (5, 37), (0, 6), (1, 1), (12, 70), (3, 3), (1, 150), (70, 90)]


class Case:
    """A pool [layers, slots, Hkv, D] (NaN outside the rows' contexts), shuffled block tables whose
    padding names a NaN block, and the rows' new queries flat in q [T + extra, H, D] (the extra
    tokens NaN). ``poison_window``: the keys before each row's first window are NaN and the table
    entries of blocks wholly before it name the NaN block (the reference reads clean copies)."""

    def __init__(self, rows, heads, kv_heads, head_dim, block_size, dtype=torch.float32, *, q_dtype=None,
                 window=None, cap=None, poison_window=False, extra_tokens=2, layers=2, layer=1, seed=0,
                 q_scale=1.0):
        gen = torch.Generator().manual_seed(seed)
        self.rows, self.block_size, self.window, self.cap = rows, block_size, window, cap
        self.heads, self.head_dim = heads, head_dim
        lengths = [c for _, c in rows]
        per_row = [math.ceil(c / block_size) for c in lengths]
        num_blocks = sum(per_row) + 3  # + the NaN block and two never used
        ids = torch.randperm(num_blocks, generator=gen).tolist()
        poison = ids.pop()
        tables = torch.full((len(rows), max(per_row, default=0) + 2), poison, dtype=torch.int32)
        shape = (layers, num_blocks * block_size, kv_heads, head_dim)
        k_pool, v_pool = torch.full(shape, math.nan), torch.full(shape, math.nan)
        for row, (length, count) in enumerate(zip(lengths, per_row)):
            tables[row, :count] = torch.tensor([ids.pop() for _ in range(count)], dtype=torch.int32)
            slots = self.slots(tables[row], length)
            k_pool[:, slots] = torch.randn((layers, length, kv_heads, head_dim), generator=gen)
            v_pool[:, slots] = torch.randn((layers, length, kv_heads, head_dim), generator=gen)
        k_pool, v_pool = k_pool.to(dtype), v_pool.to(dtype)
        self.clean_tables = tables.clone()
        self.k_clean, self.v_clean = k_pool[layer].clone(), v_pool[layer].clone()
        if poison_window and window:
            for row, (new, length) in enumerate(rows):
                first_key = max(0, length - new - window + 1) if new else length
                stale = self.slots(tables[row], first_key)
                k_pool[:, stale] = math.nan
                v_pool[:, stale] = math.nan
                tables[row, : first_key // block_size] = poison
        self.tables, self.k_cache, self.v_cache = tables, k_pool[layer], v_pool[layer]
        news = [n for n, _ in rows]
        self.starts = torch.tensor([0] + news, dtype=torch.int32).cumsum(0, dtype=torch.int32)
        self.lengths = torch.tensor(lengths, dtype=torch.int32)
        total = int(self.starts[-1])
        q = torch.full((total + extra_tokens, heads, head_dim), math.nan)
        q[:total] = torch.randn((total, heads, head_dim), generator=gen) * q_scale
        self.q = q.to(q_dtype or dtype)
        self.total = total

    def slots(self, table, length):
        j = torch.arange(length)
        return table[j // self.block_size].long() * self.block_size + j % self.block_size

    @property
    def scale(self):
        return self.head_dim**-0.5

    def kwargs(self):
        return dict(block_size=self.block_size, scale=self.scale, sliding_window=self.window, soft_cap=self.cap)

    def run(self, q=None, out=None):
        q = self.q if q is None else q
        return ops.paged_attention(q, self.k_cache, self.v_cache, self.tables, self.starts, self.lengths,
                                   backend="cpp", out=out, **self.kwargs())  # fmt: skip

    def reference(self):
        d = torch.float64
        return ops.paged_attention_reference(
            self.q.to(d), self.k_clean.to(d), self.v_clean.to(d), self.clean_tables, self.starts, self.lengths,
            **self.kwargs(),
        )  # fmt: skip

    def check(self, got, dtype=None):
        dtype = dtype or self.q.dtype
        tol = TOLERANCE[dtype]
        assert got.dtype == self.q.dtype and got.shape == self.q.shape
        want = self.reference()[: self.total]
        torch.testing.assert_close(got[: self.total].double(), want, atol=tol, rtol=tol)


def assert_untouched(out, first):
    assert bool((out[first:] == SENTINEL).all()), "tokens outside every row were written"


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (8, 2), (16, 2)], ids=["gqa1", "gqa2", "gqa4", "gqa8"])
@pytest.mark.parametrize("block_size", [1, 4, 16, 32])
def test_mixed_batch_over_gqa_and_block_sizes(heads, kv_heads, block_size):
    case = Case(MIXED, heads, kv_heads, 56, block_size, seed=block_size + heads)
    out = torch.full_like(case.q, SENTINEL)
    got = case.run(out=out)
    assert got is out
    case.check(got)
    assert_untouched(out, case.total)


@pytest.mark.parametrize("head_dim", [56, 64, 128, 1, 13, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=lambda d: str(d)[6:])
def test_head_dims_and_dtypes(head_dim, dtype):
    case = Case(MIXED[:6], 8, 2, head_dim, 16, dtype, seed=head_dim)
    case.check(case.run())


@pytest.mark.parametrize("q_dtype,kv_dtype", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32),
                                              (torch.float16, torch.float32), (torch.float32, torch.float16)])  # fmt: skip
def test_q_and_pool_of_different_dtypes(q_dtype, kv_dtype):
    case = Case(MIXED, 4, 2, 56, 16, kv_dtype, q_dtype=q_dtype)
    case.check(case.run(), dtype=max(q_dtype, kv_dtype, key=lambda d: TOLERANCE[d]))


@pytest.mark.parametrize("window", [None, 1, 7, 10_000])
@pytest.mark.parametrize("cap", [None, 2.0])
def test_sliding_window_and_soft_cap(window, cap):
    # q scaled up so that scores exceed the cap and the softmax is peaked.
    case = Case(MIXED, 8, 2, 64, 4, window=window, cap=cap, poison_window=True, q_scale=3.0, seed=11)
    case.check(case.run())


def test_window_of_one_is_the_query_itself():
    case = Case(MIXED, 4, 2, 56, 16, window=1, poison_window=True)
    got = case.run()[: case.total]
    # Each query reads only its own value: v at its position, its kv head repeated.
    positions = torch.cat([torch.arange(c - n, c) for n, c in case.rows])
    rows = torch.cat([torch.full((n,), r) for r, (n, _) in enumerate(case.rows)])
    slots = case.clean_tables[rows, positions // case.block_size].long() * case.block_size + positions % case.block_size
    want = case.v_clean[slots].repeat_interleave(2, dim=1)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=lambda d: str(d)[6:])
def test_outputs_round_like_torch(dtype):
    """Window 1 over a float32 pool: out is v itself, rounded to q's half dtype by the kernel, which
    must round as torch does (nearest even; half subnormals, overflow to inf, the largest values)."""
    gen = torch.Generator().manual_seed(3)
    magnitudes = torch.tensor([1e-9, 6e-8, 3e-5, 6.1e-5, 0.1, 1.0, 1000.0, 65504.0, 65519.0, 65520.0, 7e4, 3e38])
    values = magnitudes[torch.randint(len(magnitudes), (512, 1, 64), generator=gen)]
    values = values * (1 + torch.rand(values.shape, generator=gen) * 2**-8) * torch.randn(values.shape, generator=gen).sign()
    values[:4, 0, 0] = torch.tensor([math.inf, -math.inf, 65520.0, -65519.0])
    # Row r: one query at position r (context r + 1), which attends key r only (window 1).
    tables = torch.arange(32, dtype=torch.int32).expand(512, 32).contiguous()
    lengths = torch.arange(1, 513, dtype=torch.int32)
    starts = torch.arange(513, dtype=torch.int32)
    q = torch.randn((512, 1, 64), generator=gen).to(dtype)
    keys = torch.zeros_like(values)
    got = ops.paged_attention(q, keys, values, tables, starts, lengths, block_size=16, scale=0.1,
                              sliding_window=1, backend="cpp")  # fmt: skip
    assert torch.equal(got, values.to(dtype))


def test_long_rows_over_many_blocks():
    rows = [(1, 700), (300, 300), (17, 400)]
    case = Case(rows, 8, 2, 64, 1, window=None, layers=1, layer=0)
    case.check(case.run())
    case = Case(rows, 8, 2, 64, 16, window=97, poison_window=True, layers=1, layer=0)
    case.check(case.run())


def test_llama_heads_decode_and_prefill():
    rows = [(1, 300), (1, 17), (64, 64), (20, 100)]
    case = Case(rows, 32, 8, 128, 16, torch.bfloat16)
    case.check(case.run())


def test_strided_q_and_out():
    case = Case(MIXED, 4, 2, 56, 16)
    wide = torch.full((case.q.shape[0], 4, 2, 64), math.nan)  # q a view: heads 2 * 64 apart, tokens 512 apart
    wide[:, :, 0, :56] = case.q
    q = wide[:, :, 0, :56]
    assert not q.is_contiguous()
    out_wide = torch.full((case.q.shape[0], 4, 70), SENTINEL)
    out = out_wide[:, :, 3:59]
    got = case.run(q=q, out=out)
    assert got is out
    case.check(got)
    assert bool((out_wide[:, :, :3] == SENTINEL).all() and (out_wide[:, :, 59:] == SENTINEL).all())
    assert_untouched(out, case.total)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
def test_head_major_pool(dtype):
    """A pool whose kv heads are not adjacent within a slot: a [Hkv, slots, D] tensor seen as
    [slots, Hkv, D] (and the reads of several kv heads per work item, decode rows, stay right)."""
    case = Case(MIXED[:6], 32, 8, 64, 16, dtype, layers=1, layer=0)
    for name in ("k_cache", "v_cache", "k_clean", "v_clean"):
        setattr(case, name, getattr(case, name).transpose(0, 1).contiguous().transpose(0, 1))
    assert case.k_cache.stride(1) != case.k_cache.shape[2]
    case.check(case.run())


def test_decode_only_and_single_rows():
    for rows in ([(1, c) for c in (1, 5, 16, 17, 33, 250)], [(10, 10)], [(1, 1)], [(130, 250)]):
        case = Case(rows, 4, 2, 56, 16)
        case.check(case.run())


def test_rows_without_queries_and_empty_batches():
    case = Case([(0, 5), (0, 1), (0, 40)], 4, 2, 56, 16)  # T = 0
    out = torch.full_like(case.q, SENTINEL)
    case.run(out=out)
    assert_untouched(out, 0)
    empty = torch.empty((0, 4, 56))
    pool = torch.zeros((16, 2, 56))
    got = ops.paged_attention(empty, pool, pool, torch.zeros((0, 3), dtype=torch.int32),
                              torch.zeros(1, dtype=torch.int32), torch.zeros(0, dtype=torch.int32),
                              block_size=16, scale=0.1, backend="cpp")  # fmt: skip
    assert got.shape == (0, 4, 56)


@pytest.mark.parametrize("rows,heads,kv_heads", [(MIXED * 2, 8, 2), ([(1, 300)], 32, 8), ([(3, 40), (1, 9)], 16, 8)])
def test_independent_of_the_thread_count(rows, heads, kv_heads):
    # (A single decode row of 8 kv heads is cut into more work items, of fewer kv heads each, for
    # more threads.)
    case = Case(rows, heads, kv_heads, 56, 16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = case.run()
        torch.set_num_threads(max(4, threads))
        many = case.run()
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[: case.total], many[: case.total])
    if len(rows) < 3:
        case.check(many)


def test_contract_violations_raise():
    case = Case([(3, 10), (1, 5)], 4, 2, 56, 16)
    call = dict(block_size=16, scale=0.1, backend="cpp")
    short = torch.tensor([2, 5], dtype=torch.int32)  # row 0: 3 queries, 2 keys
    with pytest.raises(ValueError):
        ops.paged_attention(case.q, case.k_cache, case.v_cache, case.tables, case.starts, short, **call)
    long = torch.tensor([10, 16 * case.tables.shape[1] + 1], dtype=torch.int32)  # more keys than the table holds
    with pytest.raises(ValueError):
        ops.paged_attention(case.q, case.k_cache, case.v_cache, case.tables, case.starts, long, **call)
    tables = case.tables.clone()
    tables[1, 0] = -1  # a block the row reads
    with pytest.raises(ValueError):
        ops.paged_attention(case.q, case.k_cache, case.v_cache, tables, case.starts, case.lengths, **call)
    starts = torch.tensor([0, 3, case.q.shape[0] + 1], dtype=torch.int32)  # past T
    with pytest.raises(ValueError):
        ops.paged_attention(case.q, case.k_cache, case.v_cache, case.tables, starts, case.lengths, **call)
    tables = case.tables.clone()
    tables[:, 1:] = -1  # garbage past every row's blocks is never read
    case.tables = tables
    case.check(case.run())


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def batches(draw):
    rows = []
    for _ in range(draw(st.integers(1, 5))):
        context = draw(st.integers(1, 48))
        kind = draw(st.sampled_from(["decode", "prefill", "prefix", "empty"]))
        new = {"decode": 1, "prefill": context, "empty": 0}[kind] if kind != "prefix" else draw(st.integers(1, context))
        rows.append((new, context))
    kv_heads = draw(st.integers(1, 3))
    heads = kv_heads * draw(st.sampled_from([1, 2, 4, 8]))
    return dict(
        rows=rows, heads=heads, kv_heads=kv_heads, head_dim=draw(st.integers(1, 40)),
        block_size=draw(st.sampled_from([1, 2, 4, 8, 16])), window=draw(st.sampled_from([None, 1, 2, 5, 30])),
        cap=draw(st.sampled_from([None, 1.5, 20.0])), seed=draw(st.integers(0, 2**16)),
    )  # fmt: skip


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_random_batches(spec):
    rows = spec.pop("rows")
    case = Case(rows, spec.pop("heads"), spec.pop("kv_heads"), spec.pop("head_dim"), spec.pop("block_size"),
                poison_window=True, layers=1, layer=0, q_scale=2.0, **spec)  # fmt: skip
    out = torch.full_like(case.q, SENTINEL)
    case.check(case.run(out=out))
    assert_untouched(out, case.total)


def test_a_named_backend_that_cannot_run_says_why():
    from steer.ops.attention import resolve_backend

    with pytest.raises(ValueError, match="attention backend 'cpp' cannot run here: it runs float32, float16 and bfloat16, not torch.float64"):
        resolve_backend("cpp", torch.device("cpu"), torch.float64)
    with pytest.raises(ValueError, match="attention backend 'cpp' cannot run here: it runs on CPU tensors, not meta"):
        resolve_backend("cpp", torch.device("meta"), torch.float32)
    assert resolve_backend("auto", torch.device("cpu"), torch.float64) == "torch"
    assert resolve_backend("auto", torch.device("cpu"), torch.float32) == "cpp"
