"""The Triton paged attention kernels (steer_kernels.paged_attention) against the op's definition,
``steer.ops.attention.paged_attention_reference``, computed in float64 from the same inputs (K and
V converted to q's dtype first, as the kernels do).

``paged_extend_attention`` on ragged batches that mix decode rows (n_r = 1), prefill rows
(n_r = c_r), prefix-hit rows (1 < n_r < c_r), rows with no new token and a row of context 1;
``paged_decode_attention`` (one query per row: context 1, tile and block boundaries, the split
path with empty splits, every dtype, strided views, empty contexts) with and without sliding
windows and soft caps; ``steer.ops.attention.paged_attention(backend="triton")`` through both. Every pool slot outside the rows' contexts, the block that padding table entries
name, and the tokens of q outside every row hold NaN; with a window, so do the keys before each
row's first window and the table entries of the blocks wholly before it (an engine may free those
blocks): reading any of them shows as NaN in the output.

Without a GPU the kernels run under Triton's interpreter (tests/conftest.py) on tiny shapes with
16-key tiles and 4-query tiles, so that rows span several key tiles, query tiles and blocks. The
full-size cases (Llama heads, a prefill-heavy mixed batch, CUDA-graph replay) need a GPU.
"""

import os

import torch

if not torch.cuda.is_available():  # before steer_kernels is imported (tests/conftest.py does it too)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import math  # noqa: E402

import pytest  # noqa: E402

triton = pytest.importorskip("triton")
from steer.ops import attention as ops  # noqa: E402

from steer_kernels import paged_attention as pa  # noqa: E402

GPU = torch.cuda.is_available()
INTERPRETED = not isinstance(pa._paged_extend_kernel, triton.runtime.jit.JITFunction)
DEVICE = "cuda" if GPU else "cpu"
if not GPU and not INTERPRETED:
    pytest.skip(
        "no GPU, and steer_kernels was imported before TRITON_INTERPRET=1 was set: run with tests/conftest.py",
        allow_module_level=True,
    )

needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU (full-size paged attention tests)")

TOLERANCE = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
SMALL = {"block_n": 16}  # the smallest key tile
SMALL_EXTEND = {"block_n": 16, "block_m": 4}  # and 4 query positions per program
SENTINEL = 7.0  # what out holds where nothing may be written

# (n_r new tokens, c_r context): decode rows, a prefill over 3 query tiles, prefix hits (one over
# 3 key tiles), a row with no new token, context 1, a prefill shorter than a query tile.
MIXED = [(1, 23), (9, 9), (5, 37), (0, 6), (1, 1), (12, 30), (3, 3)]


class Case:
    """A pool [layers, slots, Hkv, D] (NaN outside the rows' contexts), shuffled block tables whose
    padding names a NaN block, and the rows' new queries flat in q [T + extra, H, D] (the extra
    tokens NaN). ``poison_window``: also NaN in the keys before each row's first window, whose
    wholly covered blocks' table entries name the NaN block (the reference reads clean copies)."""

    def __init__(self, rows, heads, kv_heads, head_dim, block_size, dtype=torch.float32, *, q_dtype=None,
                 window=0, cap=0.0, poison_window=False, extra_tokens=2, layers=1, layer=0, seed=0,
                 spare_columns=2, device=DEVICE):
        gen = torch.Generator().manual_seed(seed)
        self.new, self.lens_list = [n for n, _ in rows], [c for _, c in rows]
        assert all(0 <= n <= c or (n, c) == (1, 0) for n, c in rows)  # (1, 0): a decode row with no keys
        self.block_size, self.layer, self.window, self.cap = block_size, layer, window, cap
        per_row = [math.ceil(c / block_size) for c in self.lens_list]
        num_blocks = sum(per_row) + 3  # + the NaN block and two never used
        ids = torch.randperm(num_blocks, generator=gen).tolist()
        self.poison = ids.pop()
        tables = torch.full((len(rows), max(per_row, default=0) + spare_columns), self.poison, dtype=torch.int32)
        shape = (layers, num_blocks * block_size, kv_heads, head_dim)
        k_pool, v_pool = torch.full(shape, math.nan), torch.full(shape, math.nan)
        for row, (length, count) in enumerate(zip(self.lens_list, per_row)):
            tables[row, :count] = torch.tensor([ids.pop() for _ in range(count)], dtype=torch.int32)
            slots = self.slots(tables[row], length)
            k_pool[:, slots] = torch.randn((layers, length, kv_heads, head_dim), generator=gen)
            v_pool[:, slots] = torch.randn((layers, length, kv_heads, head_dim), generator=gen)
        self.tables_ref = tables.to(device)
        self.k_ref, self.v_ref = k_pool.to(dtype).to(device), v_pool.to(dtype).to(device)
        if poison_window and window:
            k_pool, v_pool, tables = k_pool.clone(), v_pool.clone(), tables.clone()
            for row, (n, c) in enumerate(rows):
                lo = max(0, c - n - window + 1)  # the first key of the row's first new query
                k_pool[:, self.slots(tables[row], lo)] = math.nan
                v_pool[:, self.slots(tables[row], lo)] = math.nan
                tables[row, : lo // block_size] = self.poison
        self.k_pool, self.v_pool = k_pool.to(dtype).to(device), v_pool.to(dtype).to(device)
        self.tables = tables.to(device)
        self.tokens = sum(self.new)
        q = torch.randn((self.tokens + extra_tokens, heads, head_dim), generator=gen) * 2.0
        q[self.tokens:] = math.nan
        self.q = q.to(q_dtype or dtype).to(device)
        self.starts = torch.tensor([0] + torch.tensor(self.new).cumsum(0).tolist(), dtype=torch.int32, device=device)
        self.lens = torch.tensor(self.lens_list, dtype=torch.int32, device=device)
        self.max_query_length = max(self.new, default=0)
        self.scale = 1.0 / math.sqrt(head_dim)

    def slots(self, table, length):
        positions = torch.arange(length, device=table.device)
        return table.long()[positions // self.block_size] * self.block_size + positions % self.block_size

    @property
    def k(self):
        return self.k_pool[self.layer]

    @property
    def v(self):
        return self.v_pool[self.layer]

    def extend(self, *, q=None, k=None, v=None, out=None, max_query_length=None, **knobs):
        """paged_extend_attention into ``out`` (default: a SENTINEL-filled [T + extra, H, D])."""
        q = self.q if q is None else q
        if out is None:
            out = torch.full(q.shape, SENTINEL, dtype=q.dtype, device=q.device)
        result = pa.paged_extend_attention(
            q, self.k if k is None else k, self.v if v is None else v, self.tables, self.starts, self.lens,
            block_size=self.block_size, scale=self.scale, max_query_length=max_query_length or self.max_query_length,
            sliding_window=self.window, soft_cap=self.cap, out=out, **knobs)
        assert result is out
        return out

    def decode(self, *, q=None, k=None, v=None, **knobs):
        """paged_decode_attention: one query per row (a case of decode_rows, extra_tokens=0)."""
        assert self.new == [1] * len(self.new) and self.q.shape[0] == len(self.new)
        return pa.paged_decode_attention(self.q if q is None else q, self.k if k is None else k,
                                         self.v if v is None else v, self.tables, self.lens, block_size=self.block_size,
                                         scale=self.scale, sliding_window=self.window, soft_cap=self.cap, **knobs)

    def reference(self, q=None):
        """float64 [T, H, D], from the clean pool and tables."""
        q = self.q if q is None else q
        k, v = self.k_ref[self.layer].to(q.dtype).double(), self.v_ref[self.layer].to(q.dtype).double()
        got = ops.paged_attention_reference(q.double(), k, v, self.tables_ref, self.starts, self.lens,
                                            block_size=self.block_size, scale=self.scale,
                                            sliding_window=self.window or None, soft_cap=self.cap or None)
        return got[: self.tokens]


def assert_matches(got, want, dtype, tokens=None):
    """got[:T] matches, and (extend) nothing was written past the rows' tokens."""
    tokens = want.shape[0] if tokens is None else tokens
    assert not torch.isnan(got[:tokens]).any(), "NaN in the output: a slot outside the context was read"
    assert torch.all(got[tokens:] == SENTINEL), "a token outside every row was written"
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got[:tokens].double().cpu(), want.cpu(), rtol=tol, atol=tol)


def decode_rows(lens):
    return [(1, c) for c in lens]


def decode_case(lens, *args, **kwargs):
    """A Case of one query per row over contexts ``lens`` (0: a row with no keys, whose output is zeros)."""
    return Case(decode_rows(lens), *args, extra_tokens=0, **kwargs)


# ---- extend ------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [4, 16], ids=lambda b: f"P{b}")
@pytest.mark.parametrize("head_dim", [16, 56], ids=lambda d: f"D{d}")
@pytest.mark.parametrize("heads, kv_heads", [(2, 2), (4, 2), (8, 2), (8, 1)], ids=lambda x: str(x))
def test_extend_mixed_batch(heads, kv_heads, head_dim, block_size):
    """GQA ratios 1 / 2 / 4 / 8, a head dim that is not a power of two, blocks smaller than and as
    large as the key tile."""
    case = Case(MIXED, heads, kv_heads, head_dim, block_size, seed=heads + kv_heads + head_dim + block_size)
    got = case.extend(**SMALL_EXTEND)
    assert got.shape == case.q.shape and got.dtype == case.q.dtype
    assert_matches(got, case.reference(), torch.float32)


@pytest.mark.parametrize("cap", [0.0, 2.5], ids=lambda c: f"cap{c}")
@pytest.mark.parametrize("window", [1, 5, 1000], ids=lambda w: f"W{w}")
def test_extend_window_and_soft_cap(window, cap):
    """Windows of one key, shorter than most contexts, longer than every context; with the keys
    before each row's first window poisoned (the tiles before it are never read)."""
    case = Case(MIXED, 4, 2, 16, 4, window=window, cap=cap, poison_window=True, seed=window)
    assert_matches(case.extend(**SMALL_EXTEND), case.reference(), torch.float32)


def test_extend_soft_cap_without_window():
    """A small cap bends every score (scale * q.k spans about +-8 here), so a wrong tanh shows."""
    case = Case(MIXED, 4, 2, 16, 16, cap=1.0, seed=11)
    assert_matches(case.extend(**SMALL_EXTEND), case.reference(), torch.float32)


@pytest.mark.parametrize("window, cap", [(0, 0.0), (5, 2.5)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_extend_half_dtypes(dtype, window, cap):
    case = Case(MIXED, 4, 2, 56, 4, dtype, window=window, cap=cap, poison_window=True, seed=12)
    got = case.extend(**SMALL_EXTEND)
    assert got.dtype == dtype
    assert_matches(got, case.reference(), dtype)


def test_extend_q_dtype_decides_the_dots():
    """Keys and values are converted to q's dtype: bfloat16 q over a float32 pool."""
    case = Case(MIXED, 4, 2, 16, 4, torch.float32, q_dtype=torch.bfloat16, seed=13)
    assert_matches(case.extend(**SMALL_EXTEND), case.reference(), torch.bfloat16)


@pytest.mark.parametrize("block_m, block_n", [(1, 16), (16, 32), (None, 64), (None, None)], ids=str)
def test_extend_tile_sizes(block_m, block_n):
    """One query per program, a query tile longer than every row, the defaults (block_m capped
    by max_query_length, 64-key tiles over 4-key blocks)."""
    case = Case(MIXED, 4, 2, 16, 4, window=5, poison_window=True, seed=14)
    assert_matches(case.extend(block_m=block_m, block_n=block_n), case.reference(), torch.float32)


def test_extend_strided_views_and_a_larger_max_query_length():
    """k / v: a layer of a [L, S, Hkv, D] pool and a slot-major copy; q and out non-contiguous;
    max_query_length past the longest row (the extra programs exit)."""
    case = Case(MIXED, 4, 2, 16, 4, layers=3, layer=1, seed=15)
    want = case.reference()
    assert_matches(case.extend(max_query_length=case.max_query_length + 5, **SMALL_EXTEND), want, torch.float32)
    slot_major_k, slot_major_v = case.k_pool.transpose(0, 1).contiguous(), case.v_pool.transpose(0, 1).contiguous()
    q = torch.cat([case.q, case.q], dim=-1)[..., :16]  # token stride 2 * H * D
    total = case.q.shape[0]
    out = torch.full((4, total, 16), SENTINEL, device=DEVICE).transpose(0, 1)  # [T, 4, 16], non-contiguous
    got = case.extend(q=q, k=slot_major_k[:, 1], v=slot_major_v[:, 1], out=out, **SMALL_EXTEND)
    assert_matches(got, want, torch.float32)


def test_extend_rows_without_new_tokens():
    """Every row with n_r = 0: nothing is written (any max_query_length); no rows, no tokens."""
    case = Case([(0, 5), (0, 9)], 4, 2, 16, 4, seed=16)
    out = case.extend(max_query_length=3, **SMALL_EXTEND)
    assert torch.all(out == SENTINEL)
    out = case.extend(max_query_length=0, **SMALL_EXTEND)
    assert torch.all(out == SENTINEL)
    q = torch.empty((0, 4, 16), device=DEVICE)
    k = torch.zeros((8, 2, 16), device=DEVICE)
    none = torch.zeros(0, dtype=torch.int32, device=DEVICE)
    got = pa.paged_extend_attention(q, k, k, torch.zeros((0, 2), dtype=torch.int32, device=DEVICE),
                                    torch.zeros(1, dtype=torch.int32, device=DEVICE), none, block_size=4, scale=1.0,
                                    max_query_length=0)
    assert got.shape == (0, 4, 16)


def test_extend_defaults():
    assert pa.extend_defaults(128, 4, 512, torch.bfloat16) == (32, 64)  # 128 tile rows
    assert pa.extend_defaults(256, 8, 512, torch.bfloat16) == (8, 32)
    assert pa.extend_defaults(128, 4, 3, torch.bfloat16) == (4, 64)  # capped by the longest row
    assert pa.extend_defaults(64, 64, 512, torch.float16) == (2, 64)
    assert pa.extend_defaults(128, 4, 512, torch.float32) == (8, 32)


# ---- decode: one query per row ----------------------------------------------------------------


@pytest.mark.parametrize("splits", [1, 3], ids=lambda s: f"splits{s}")
@pytest.mark.parametrize("block_size", [4, 16], ids=lambda b: f"P{b}")
@pytest.mark.parametrize("head_dim", [16, 32], ids=lambda d: f"D{d}")
@pytest.mark.parametrize("heads, kv_heads", [(2, 2), (4, 2), (4, 1)], ids=lambda x: str(x))
@pytest.mark.parametrize("lens", [(45,), (1, 32, 37)], ids=lambda n: f"R{len(n)}")
def test_decode_matches_reference(lens, heads, kv_heads, head_dim, block_size, splits):
    """Context 1, a block / tile boundary (32), odd lengths over 2-3 tiles; with 3 splits the
    short rows leave splits empty."""
    case = decode_case(lens, heads, kv_heads, head_dim, block_size, seed=len(lens) + heads + head_dim)
    got = case.decode(num_splits=splits, **SMALL)
    assert got.shape == case.q.shape and got.dtype == case.q.dtype
    assert_matches(got, case.reference(), torch.float32)


@pytest.mark.parametrize("splits", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_decode_dtypes(dtype, splits):
    case = decode_case((3, 16, 50), 8, 2, 32, 4, dtype, seed=3)
    got = case.decode(num_splits=splits, **SMALL)
    assert got.dtype == dtype
    assert_matches(got, case.reference(), dtype)


@pytest.mark.parametrize("q_dtype, cache_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.float16)],
                         ids=str)
def test_decode_mixed_dtypes_compute_in_q_dtype(q_dtype, cache_dtype):
    """Keys and values are converted to q's dtype, as model_runner.paged_attention does."""
    case = decode_case((7, 21), 4, 2, 16, 4, cache_dtype, q_dtype=q_dtype, seed=4)
    got = case.decode(num_splits=2, **SMALL)
    assert got.dtype == q_dtype
    assert_matches(got, case.reference(), torch.bfloat16 if torch.bfloat16 in (q_dtype, cache_dtype) else torch.float16)


@pytest.mark.parametrize("block_size, block_n", [(32, 16), (2, 16), (16, 64)], ids=str)
def test_decode_tiles_and_blocks_of_any_relative_size(block_size, block_n):
    """A tile inside one block (block_size > block_n), a tile over 8 blocks, the default 64-key tile."""
    case = decode_case((1, 33, 70), 4, 2, 16, block_size, seed=5)
    for splits in (1, 2):
        assert_matches(case.decode(num_splits=splits, block_n=block_n), case.reference(), torch.float32)


@pytest.mark.parametrize("splits", [1, 2])
def test_decode_strided_views(splits):
    """k / v: a layer of a [L, S, Hkv, D] pool, a slot-major [S, L, Hkv, D] pool, and every-other
    element of D; q and out non-contiguous."""
    case = decode_case((5, 19, 40), 4, 2, 16, 4, layers=3, layer=1, seed=6)
    want = case.reference()
    assert_matches(case.decode(num_splits=splits, **SMALL), want, torch.float32)  # layer slice: storage offset
    slot_major_k, slot_major_v = case.k_pool.transpose(0, 1).contiguous(), case.v_pool.transpose(0, 1).contiguous()
    got = case.decode(k=slot_major_k[:, 1], v=slot_major_v[:, 1], num_splits=splits, **SMALL)
    assert_matches(got, want, torch.float32)
    wide_k, wide_v = (torch.stack([t, t], dim=-1).flatten(-2)[..., ::2] for t in (case.k, case.v))
    assert wide_k.stride(-1) == 2 and torch.equal(wide_k.nan_to_num(), case.k.nan_to_num())
    q = torch.cat([case.q, case.q], dim=-1)[..., :16]  # row stride 2 * H * D
    out = torch.full((4, 3, 16), math.nan, device=DEVICE).transpose(0, 1)  # [3, 4, 16], non-contiguous
    result = case.decode(k=wide_k, v=wide_v, q=q, out=out, num_splits=splits, **SMALL)
    assert result is out
    assert_matches(out, want, torch.float32)


@pytest.mark.parametrize("splits", [1, 3])
def test_decode_empty_context_gives_zeros(splits):
    """context 0 (a padding row of a captured batch): zeros, not NaN; the other rows unaffected."""
    case = decode_case((9, 0, 20), 4, 2, 16, 4, seed=7)
    got = case.decode(num_splits=splits, **SMALL)
    assert torch.equal(got[1].cpu(), torch.zeros_like(got[1].cpu()))
    assert_matches(got, case.reference(), torch.float32)


def test_decode_split_plan():
    cpu = torch.device("cpu")  # 4 "SMs" under the interpreter
    assert pa.plan_splits(64, 8, 4096, cpu) == 1  # the rows fill the GPU
    assert pa.plan_splits(1, 1, 4096, cpu) == 4 * pa.PROGRAMS_PER_SM  # few rows, long context
    assert pa.plan_splits(1, 2, 600, cpu) == 2  # bounded by MIN_KEYS_PER_SPLIT
    assert pa.plan_splits(1, 1, 100, cpu) == 1  # too short to split
    assert pa.plan_splits(1, 1, 10**6, cpu, programs_per_sm=1000) == pa.MAX_SPLITS
    assert pa.plan_splits(0, 8, 4096, cpu) >= 1


def test_decode_auto_split_runs_the_split_path():
    case = decode_case((600, 3), 2, 1, 16, 16, spare_columns=4, seed=8)
    width = case.tables.shape[1] * case.block_size
    assert pa.plan_splits(2, 1, width, case.q.device) > 1
    assert_matches(case.decode(), case.reference(), torch.float32)


def test_decode_zero_rows():
    q = torch.empty((0, 4, 16), device=DEVICE)
    k = torch.zeros((8, 2, 16), device=DEVICE)
    out = pa.paged_decode_attention(q, k, k, torch.zeros((0, 2), dtype=torch.int32, device=DEVICE),
                                    torch.zeros(0, dtype=torch.int32, device=DEVICE), block_size=4, scale=1.0)
    assert out.shape == (0, 4, 16)


def _decode_invalid_inputs():
    q, k = torch.zeros(2, 4, 16), torch.zeros(32, 2, 16)
    tables, lens = torch.zeros(2, 3, dtype=torch.int32), torch.ones(2, dtype=torch.int32)
    base = dict(q=q, k_cache=k, v_cache=k, block_tables=tables, context_lens=lens, block_size=4)
    return [
        (dict(q=torch.zeros(2, 64)), "q must be"),
        (dict(q=torch.zeros(2, 3, 16)), "multiple of the kv heads"),
        (dict(q=torch.zeros(2, 4, 512), k_cache=torch.zeros(8, 2, 512), v_cache=torch.zeros(8, 2, 512)),
         "head_dim must be in"),
        (dict(q=torch.zeros(2, 4, 32)), "head_dim of q"),
        (dict(v_cache=torch.zeros(32, 1, 16)), "k_cache and v_cache must"),
        (dict(v_cache=k.half()), "dtypes differ"),
        (dict(q=q.long()), "q must be float32"),
        (dict(block_size=6), "power of two"),
        (dict(block_tables=tables.float()), "block_tables must be int32"),
        (dict(block_tables=tables[:1]), "block_tables must be"),
        (dict(context_lens=lens[:1]), "context_lens must be"),
        (dict(out=torch.zeros(2, 4, 8)), "out must be"),
        (dict(num_splits=0), "num_splits"),
        (dict(block_n=8), "block_n"),
    ], base


@pytest.mark.parametrize("index", range(len(_decode_invalid_inputs()[0])))
def test_decode_invalid_inputs(index):
    cases, base = _decode_invalid_inputs()
    change, message = cases[index]
    args = {**base, **change}
    with pytest.raises(ValueError, match=message):
        pa.paged_decode_attention(args.pop("q"), args.pop("k_cache"), args.pop("v_cache"), args.pop("block_tables"),
                                  args.pop("context_lens"), scale=1.0, **args)


@needs_gpu
def test_decode_mismatched_devices():
    k = torch.zeros(32, 2, 16, device="cuda")
    with pytest.raises(ValueError, match="one device"):
        pa.paged_decode_attention(torch.zeros(2, 4, 16), k, k, torch.zeros(2, 3, dtype=torch.int32, device="cuda"),
                                  torch.ones(2, dtype=torch.int32, device="cuda"), block_size=4, scale=1.0)


# ---- GPU only: Llama-size shapes, default tiles, auto-planned splits --------------------------------


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("rows, max_len", [(64, 4096), (8, 4096), (2, 8192)], ids=str)
def test_gpu_decode_llama_shapes(rows, max_len, dtype):
    gen = torch.Generator().manual_seed(rows)
    lens = torch.randint(1, max_len + 1, (rows,), generator=gen).tolist()
    lens[0] = max_len
    case = decode_case(lens, 32, 8, 128, 16, dtype, seed=rows)
    for splits in (None, 1):
        assert_matches(case.decode(num_splits=splits), case.reference(), dtype)


@needs_gpu
@pytest.mark.parametrize("heads, kv_heads, head_dim",
                         [(32, 8, 256), (12, 12, 64), (64, 1, 80), (16, 16, 96), (8, 2, 8)], ids=str)
def test_gpu_decode_head_shapes(heads, kv_heads, head_dim):
    case = decode_case((1, 17, 300, 2049), heads, kv_heads, head_dim, 16, torch.bfloat16, seed=head_dim)
    for splits in (1, 4):
        assert_matches(case.decode(num_splits=splits), case.reference(), torch.bfloat16)


@needs_gpu
@pytest.mark.parametrize("block_n, num_warps, num_stages", [(32, 4, 2), (64, 8, 3), (128, 8, 2)], ids=str)
def test_gpu_decode_knobs(block_n, num_warps, num_stages):
    case = decode_case((1, 777, 3000), 32, 8, 128, 16, torch.bfloat16, seed=9)
    for splits in (1, 5):
        got = case.decode(num_splits=splits, block_n=block_n, num_warps=num_warps, num_stages=num_stages)
        assert_matches(got, case.reference(), torch.bfloat16)


@needs_gpu
def test_gpu_decode_cuda_graph_replay():
    """The launcher never synchronises: capture it, change q and the context lengths in place, replay."""
    case = decode_case((100, 2000, 40), 32, 8, 128, 16, torch.bfloat16, seed=10)
    out = torch.empty_like(case.q)
    for splits in (1, 4):
        case.decode(out=out, num_splits=splits)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            case.decode(out=out, num_splits=splits)
        case.q.copy_(torch.randn_like(case.q))
        case.lens_list = [90, 1999, 1]
        case.lens.copy_(torch.tensor(case.lens_list, dtype=torch.int32))
        graph.replay()
        torch.cuda.synchronize()
        assert_matches(out, case.reference(), torch.bfloat16)


# ---- decode: windows and soft caps ------------------------------------------------------------


@pytest.mark.parametrize("splits", [1, 3], ids=lambda s: f"splits{s}")
@pytest.mark.parametrize("window, cap", [(1, 0.0), (5, 0.0), (1000, 0.0), (0, 1.0), (20, 2.5)], ids=str)
def test_decode_window_and_soft_cap(window, cap, splits):
    """A window of one key, one inside a tile, one over every context; with the keys before the
    window poisoned; with 3 splits of the window's tiles, some empty."""
    case = Case(decode_rows((1, 16, 45, 70)), 4, 2, 16, 4, window=window, cap=cap, poison_window=True,
                extra_tokens=0, seed=window + splits)
    assert_matches(case.decode(num_splits=splits, **SMALL), case.reference(), torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_decode_window_and_soft_cap_half(dtype):
    case = Case(decode_rows((3, 40, 57)), 8, 2, 56, 16, dtype, window=19, cap=2.5, poison_window=True,
                extra_tokens=0, seed=17)
    assert_matches(case.decode(num_splits=2, **SMALL), case.reference(), dtype)


def test_decode_split_plan_covers_only_the_window():
    assert pa.window_span(8192, 0, 64) == 8192
    assert pa.window_span(8192, 4096, 64) == 4096 + 64  # W keys from any offset: W / 64 + 1 tiles
    assert pa.window_span(8192, 1, 64) == 64
    assert pa.window_span(100, 4096, 64) == 100
    cpu = torch.device("cpu")
    assert pa.plan_splits(1, 1, pa.window_span(10**6, 300, 64), cpu) == 1  # a long context, a short window
    case = Case(decode_rows((600, 300)), 2, 1, 16, 16, window=300, poison_window=True, extra_tokens=0,
                spare_columns=4, seed=18)
    assert pa.plan_splits(2, 1, case.tables.shape[1] * 16, case.q.device) > 1
    assert_matches(case.decode(), case.reference(), torch.float32)  # auto-planned: one split here


def test_soft_cap_tanh_is_stable():
    """Large scores saturate at +-cap (no inf / NaN from exp overflow); tiny ones stay linear."""
    q = torch.zeros((3, 1, 16))
    q[0, 0, 0], q[1, 0, 0], q[2, 0, 0] = 1e4, -1e4, 1e-6
    k = torch.zeros((16, 1, 16))
    k[:, 0, 0] = torch.linspace(-1, 1, 16)
    v = torch.randn((16, 1, 16), generator=torch.Generator().manual_seed(19))
    tables = torch.arange(4, dtype=torch.int32).repeat(3, 1)
    lens = torch.full((3,), 16, dtype=torch.int32)
    starts = torch.arange(4, dtype=torch.int32)
    got = pa.paged_decode_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), tables.to(DEVICE), lens.to(DEVICE),
                                    block_size=4, scale=1.0, soft_cap=3.0, block_n=16)
    want = ops.paged_attention_reference(q.double(), k.double(), v.double(), tables, starts, lens, block_size=4,
                                         scale=1.0, soft_cap=3.0)
    torch.testing.assert_close(got.double().cpu(), want, rtol=2e-5, atol=2e-5)


# ---- through steer.ops.attention ---------------------------------------------------------------


@pytest.mark.parametrize("max_query_length", [None, 12], ids=lambda m: f"mql{m}")
def test_op_triton_backend_mixed_batch(max_query_length):
    """paged_attention(backend="triton") runs the extend kernel on a mixed batch (on CPU tensors
    under the interpreter too)."""
    case = Case(MIXED, 4, 2, 16, 4, window=5, cap=2.5, extra_tokens=0, seed=20)
    got = ops.paged_attention(case.q, case.k, case.v, case.tables, case.starts, case.lens, block_size=4,
                              scale=case.scale, sliding_window=5, soft_cap=2.5, max_query_length=max_query_length,
                              backend="triton")
    assert_matches(got, case.reference(), torch.float32)


def test_op_triton_backend_decode_batch():
    """max_query_length 1: the decode kernel."""
    case = Case(decode_rows((1, 16, 45)), 4, 2, 16, 4, window=20, extra_tokens=0, seed=21)
    got = ops.paged_attention(case.q, case.k, case.v, case.tables, case.starts, case.lens, block_size=4,
                              scale=case.scale, sliding_window=20, max_query_length=1, backend="triton")
    assert_matches(got, case.reference(), torch.float32)


# ---- argument checks ---------------------------------------------------------------------------


def _invalid_extend_inputs():
    q, k = torch.zeros(5, 4, 16), torch.zeros(32, 2, 16)
    tables, lens = torch.zeros(2, 3, dtype=torch.int32), torch.full((2,), 4, dtype=torch.int32)
    starts = torch.tensor([0, 2, 5], dtype=torch.int32)
    base = dict(q=q, k_cache=k, v_cache=k, block_tables=tables, query_starts=starts, context_lens=lens, block_size=4,
                max_query_length=3)
    return [
        (dict(q=torch.zeros(5, 64)), "q must be"),
        (dict(q=torch.zeros(5, 3, 16)), "multiple of the kv heads"),
        (dict(q=torch.zeros(5, 4, 32)), "head_dim of q"),
        (dict(v_cache=k.half()), "dtypes differ"),
        (dict(block_size=6), "power of two"),
        (dict(context_lens=lens.view(2, 1)), "context_lens must be 1-D"),
        (dict(query_starts=starts[:2]), "query_starts must be"),
        (dict(query_starts=starts.float()), "query_starts must be int32"),
        (dict(block_tables=tables[:1]), "block_tables must be"),
        (dict(max_query_length=-1), "max_query_length"),
        (dict(max_query_length=torch.tensor(3)), "max_query_length"),
        (dict(sliding_window=-1), "sliding_window"),
        (dict(soft_cap=-1.0), "soft_cap"),
        (dict(soft_cap=math.nan), "soft_cap"),
        (dict(block_m=3), "block_m"),
        (dict(block_n=8), "block_n"),
        (dict(out=torch.zeros(5, 4, 8)), "out must be"),
    ], base


@pytest.mark.parametrize("index", range(len(_invalid_extend_inputs()[0])))
def test_extend_invalid_inputs(index):
    cases, base = _invalid_extend_inputs()
    change, message = cases[index]
    args = {**base, **change}
    with pytest.raises(ValueError, match=message):
        pa.paged_extend_attention(args.pop("q"), args.pop("k_cache"), args.pop("v_cache"), args.pop("block_tables"),
                                  args.pop("query_starts"), args.pop("context_lens"), scale=1.0, **args)


@pytest.mark.parametrize("change, message", [(dict(sliding_window=-2), "sliding_window"),
                                             (dict(soft_cap=math.inf), "soft_cap")], ids=str)
def test_decode_invalid_window_and_cap(change, message):
    q, k = torch.zeros(2, 4, 16), torch.zeros(32, 2, 16)
    with pytest.raises(ValueError, match=message):
        pa.paged_decode_attention(q, k, k, torch.zeros(2, 3, dtype=torch.int32), torch.ones(2, dtype=torch.int32),
                                  block_size=4, scale=1.0, **change)


# ---- GPU only: full-size shapes, default tiles, CUDA graphs -------------------------------------


def _prefill_heavy(rows=8, new=512, cached=512, decodes=56, decode_context=1024):
    return [(new, cached + new)] * rows + [(1, decode_context)] * decodes


@needs_gpu
@pytest.mark.parametrize("window, cap", [(0, 0.0), (256, 0.0), (0, 50.0)], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_gpu_extend_prefill_heavy(dtype, window, cap):
    """8 rows of 512 new tokens after 512 cached + 56 decode rows at 1024, H=32 Hkv=8 D=128."""
    case = Case(_prefill_heavy(), 32, 8, 128, 16, dtype, window=window, cap=cap, poison_window=True, seed=30)
    assert_matches(case.extend(), case.reference(), dtype)


@needs_gpu
@pytest.mark.parametrize("heads, kv_heads, head_dim", [(32, 8, 256), (12, 12, 64), (64, 1, 80), (16, 16, 96),
                                                       (8, 2, 56)], ids=str)
def test_gpu_extend_head_shapes(heads, kv_heads, head_dim):
    rows = [(1, 17), (300, 300), (77, 2049), (0, 10), (129, 200)]
    case = Case(rows, heads, kv_heads, head_dim, 16, torch.bfloat16, seed=head_dim)
    assert_matches(case.extend(), case.reference(), torch.bfloat16)


@needs_gpu
@pytest.mark.parametrize("block_m, block_n, num_warps, num_stages", [(16, 32, 4, 2), (32, 64, 8, 3),
                                                                     (64, 64, 8, 2), (8, 128, 4, 1)], ids=str)
def test_gpu_extend_knobs(block_m, block_n, num_warps, num_stages):
    case = Case([(1, 777), (250, 3000), (64, 64)], 32, 8, 128, 16, torch.bfloat16, window=1000, seed=31)
    got = case.extend(block_m=block_m, block_n=block_n, num_warps=num_warps, num_stages=num_stages)
    assert_matches(got, case.reference(), torch.bfloat16)


@needs_gpu
@pytest.mark.parametrize("window, cap", [(0, 0.0), (512, 30.0)], ids=str)
def test_gpu_decode_window_and_cap(window, cap):
    case = Case(decode_rows((1, 700, 5000, 8192)), 32, 8, 128, 16, torch.bfloat16, window=window, cap=cap,
                poison_window=True, extra_tokens=0, seed=32)
    for splits in (None, 1, 4):
        assert_matches(case.decode(num_splits=splits), case.reference(), torch.bfloat16)


@needs_gpu
def test_gpu_extend_cuda_graph_replay():
    """The extend launcher never synchronises: capture it, change q, query_starts and the context
    lengths in place (T and every n_r <= max_query_length kept), replay."""
    case = Case([(100, 300), (1, 2000), (40, 40), (59, 500)], 32, 8, 128, 16, torch.bfloat16, extra_tokens=0,
                seed=33)
    out = torch.empty_like(case.q)
    case.extend(out=out)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        case.extend(out=out)
    case.q.copy_(torch.randn_like(case.q))
    case.new, case.lens_list = [60, 41, 40, 59], [290, 1999, 40, 60]  # still 200 tokens, n_r <= 100
    case.starts.copy_(torch.tensor([0, 60, 101, 141, 200], dtype=torch.int32))
    case.lens.copy_(torch.tensor(case.lens_list, dtype=torch.int32))
    graph.replay()
    torch.cuda.synchronize()
    assert_matches(out, case.reference(), torch.bfloat16)
