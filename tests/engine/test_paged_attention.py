"""steer_kernels.paged_attention (decode attention straight from the paged KV pool) against a torch
reference: gather each row's slots, repeat the kv heads, softmax(q k^T * scale) v in float64.

Without a GPU the kernels run under Triton's interpreter on small shapes with 16-key tiles, so
that rows span several tiles and blocks, and the split path (partials + merge) runs with empty
splits. Every pool slot outside the rows' contexts, and the block that padding table entries
name, holds NaN: reading a wrong slot shows in the output. The larger tests (Llama-size heads,
contexts up to 8192, auto-planned splits) and the CUDA-graph test need a GPU and skip without one.
"""

import os

import torch

if not torch.cuda.is_available():  # before steer_kernels is imported (tests/conftest.py does it too)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import math  # noqa: E402

import pytest  # noqa: E402

triton = pytest.importorskip("triton")
from steer_kernels import paged_attention as pa  # noqa: E402

GPU = torch.cuda.is_available()
INTERPRETED = not isinstance(pa._paged_decode_kernel, triton.runtime.jit.JITFunction)
DEVICE = "cuda" if GPU else "cpu"
if not GPU and not INTERPRETED:
    pytest.skip(
        "no GPU, and steer_kernels was imported before TRITON_INTERPRET=1 was set: run with tests/conftest.py",
        allow_module_level=True,
    )

needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU (full-size paged attention tests)")

TOLERANCE = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
SMALL = {"block_n": 16}  # the smallest tile: 16 keys


class Case:
    """A pool [layers, slots, Hkv, D] (NaN outside the rows' contexts), shuffled block tables whose
    padding names a NaN block, and one query per row."""

    def __init__(self, lens, heads, kv_heads, head_dim, block_size, dtype=torch.float32, *, q_dtype=None,
                 layers=1, layer=0, seed=0, spare_columns=2, device=DEVICE):
        gen = torch.Generator().manual_seed(seed)
        self.lens_list, self.block_size, self.layer = list(lens), block_size, layer
        rows = len(self.lens_list)
        per_row = [math.ceil(n / block_size) for n in self.lens_list]
        num_blocks = sum(per_row) + 3  # + the NaN block and two never used
        ids = torch.randperm(num_blocks, generator=gen).tolist()
        poison = ids.pop()
        tables = torch.full((rows, max(per_row) + spare_columns), poison, dtype=torch.int32)
        shape = (layers, num_blocks * block_size, kv_heads, head_dim)
        k_pool = torch.full(shape, math.nan)
        v_pool = torch.full(shape, math.nan)
        for row, (length, count) in enumerate(zip(self.lens_list, per_row)):
            tables[row, :count] = torch.tensor([ids.pop() for _ in range(count)], dtype=torch.int32)
            slots = self.slots(tables[row], length)
            k_pool[:, slots] = torch.randn((layers, length, kv_heads, head_dim), generator=gen)
            v_pool[:, slots] = torch.randn((layers, length, kv_heads, head_dim), generator=gen)
        self.q = (torch.randn((rows, heads, head_dim), generator=gen) * 2.0).to(q_dtype or dtype).to(device)
        self.k_pool, self.v_pool = k_pool.to(dtype).to(device), v_pool.to(dtype).to(device)
        self.tables = tables.to(device)
        self.lens = torch.tensor(self.lens_list, dtype=torch.int32, device=device)
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

    def run(self, *, k=None, v=None, q=None, **knobs):
        return pa.paged_decode_attention(self.q if q is None else q, self.k if k is None else k,
                                         self.v if v is None else v, self.tables, self.lens,
                                         block_size=self.block_size, scale=self.scale, **knobs)

    def reference(self, q=None, k=None, v=None):
        """float64 [R, H, D]: per row, gather its slots, repeat kv heads, softmax(q k^T scale) v."""
        q = self.q if q is None else q
        k, v = (self.k if k is None else k), (self.v if v is None else v)
        group = q.shape[1] // k.shape[1]
        out = torch.zeros(q.shape, dtype=torch.float64, device=q.device)
        for row, length in enumerate(self.lens_list):
            if length == 0:
                continue
            slots = self.slots(self.tables[row], length)
            keys = k[slots].to(q.dtype).double().repeat_interleave(group, dim=1)  # [L, H, D]
            values = v[slots].to(q.dtype).double().repeat_interleave(group, dim=1)
            scores = torch.einsum("hd,lhd->hl", q[row].double(), keys) * self.scale
            out[row] = torch.einsum("hl,lhd->hd", scores.softmax(dim=-1), values)
        return out


def assert_matches(got, want, dtype):
    assert not torch.isnan(got).any(), "NaN in the output: a slot outside the context was read"
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got.double().cpu(), want.cpu(), rtol=tol, atol=tol)


@pytest.mark.parametrize("splits", [1, 3], ids=lambda s: f"splits{s}")
@pytest.mark.parametrize("block_size", [4, 16], ids=lambda b: f"P{b}")
@pytest.mark.parametrize("head_dim", [16, 32], ids=lambda d: f"D{d}")
@pytest.mark.parametrize("heads, kv_heads", [(2, 2), (4, 2), (4, 1)], ids=lambda x: str(x))
@pytest.mark.parametrize("lens", [(45,), (1, 32, 37)], ids=lambda n: f"R{len(n)}")
def test_matches_reference(lens, heads, kv_heads, head_dim, block_size, splits):
    """Context 1, a block / tile boundary (32), odd lengths over 2-3 tiles; with 3 splits the
    short rows leave splits empty."""
    case = Case(lens, heads, kv_heads, head_dim, block_size, seed=len(lens) + heads + head_dim)
    got = case.run(num_splits=splits, **SMALL)
    assert got.shape == case.q.shape and got.dtype == case.q.dtype
    assert_matches(got, case.reference(), torch.float32)


@pytest.mark.parametrize("splits", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_dtypes(dtype, splits):
    case = Case((3, 16, 50), 8, 2, 32, 4, dtype, seed=3)
    got = case.run(num_splits=splits, **SMALL)
    assert got.dtype == dtype
    assert_matches(got, case.reference(), dtype)


@pytest.mark.parametrize("q_dtype, cache_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.float16)],
                         ids=str)
def test_mixed_dtypes_compute_in_q_dtype(q_dtype, cache_dtype):
    """Keys and values are converted to q's dtype, as model_runner.paged_attention does."""
    case = Case((7, 21), 4, 2, 16, 4, cache_dtype, q_dtype=q_dtype, seed=4)
    got = case.run(num_splits=2, **SMALL)
    assert got.dtype == q_dtype
    assert_matches(got, case.reference(), torch.bfloat16 if torch.bfloat16 in (q_dtype, cache_dtype) else torch.float16)


@pytest.mark.parametrize("block_size, block_n", [(32, 16), (2, 16), (16, 64)], ids=str)
def test_tiles_and_blocks_of_any_relative_size(block_size, block_n):
    """A tile inside one block (block_size > block_n), a tile over 8 blocks, the default 64-key tile."""
    case = Case((1, 33, 70), 4, 2, 16, block_size, seed=5)
    for splits in (1, 2):
        assert_matches(case.run(num_splits=splits, block_n=block_n), case.reference(), torch.float32)


@pytest.mark.parametrize("splits", [1, 2])
def test_strided_views(splits):
    """k / v: a layer of a [L, S, Hkv, D] pool, a slot-major [S, L, Hkv, D] pool, and every-other
    element of D; q and out non-contiguous."""
    case = Case((5, 19, 40), 4, 2, 16, 4, layers=3, layer=1, seed=6)
    want = case.reference()
    assert_matches(case.run(num_splits=splits, **SMALL), want, torch.float32)  # layer slice: storage offset
    slot_major_k, slot_major_v = case.k_pool.transpose(0, 1).contiguous(), case.v_pool.transpose(0, 1).contiguous()
    got = case.run(k=slot_major_k[:, 1], v=slot_major_v[:, 1], num_splits=splits, **SMALL)
    assert_matches(got, want, torch.float32)
    wide_k, wide_v = (torch.stack([t, t], dim=-1).flatten(-2)[..., ::2] for t in (case.k, case.v))
    assert wide_k.stride(-1) == 2 and torch.equal(wide_k.nan_to_num(), case.k.nan_to_num())
    q = torch.cat([case.q, case.q], dim=-1)[..., :16]  # row stride 2 * H * D
    out = torch.full((4, 3, 16), math.nan, device=DEVICE).transpose(0, 1)  # [3, 4, 16], non-contiguous
    result = case.run(k=wide_k, v=wide_v, q=q, out=out, num_splits=splits, **SMALL)
    assert result is out
    assert_matches(out, want, torch.float32)


@pytest.mark.parametrize("splits", [1, 3])
def test_empty_context_gives_zeros(splits):
    """context 0 (a padding row of a captured batch): zeros, not NaN; the other rows unaffected."""
    case = Case((9, 0, 20), 4, 2, 16, 4, seed=7)
    got = case.run(num_splits=splits, **SMALL)
    assert torch.equal(got[1].cpu(), torch.zeros_like(got[1].cpu()))
    assert_matches(got, case.reference(), torch.float32)


def test_split_plan():
    cpu = torch.device("cpu")  # 4 "SMs" under the interpreter
    assert pa.plan_splits(64, 8, 4096, cpu) == 1  # the rows fill the GPU
    assert pa.plan_splits(1, 1, 4096, cpu) == 4 * pa.PROGRAMS_PER_SM  # few rows, long context
    assert pa.plan_splits(1, 2, 600, cpu) == 2  # bounded by MIN_KEYS_PER_SPLIT
    assert pa.plan_splits(1, 1, 100, cpu) == 1  # too short to split
    assert pa.plan_splits(1, 1, 10**6, cpu, programs_per_sm=1000) == pa.MAX_SPLITS
    assert pa.plan_splits(0, 8, 4096, cpu) >= 1


def test_auto_split_runs_the_split_path():
    case = Case((600, 3), 2, 1, 16, 16, spare_columns=4, seed=8)
    width = case.tables.shape[1] * case.block_size
    assert pa.plan_splits(2, 1, width, case.q.device) > 1
    assert_matches(case.run(), case.reference(), torch.float32)


def test_zero_rows():
    q = torch.empty((0, 4, 16), device=DEVICE)
    k = torch.zeros((8, 2, 16), device=DEVICE)
    out = pa.paged_decode_attention(q, k, k, torch.zeros((0, 2), dtype=torch.int32, device=DEVICE),
                                    torch.zeros(0, dtype=torch.int32, device=DEVICE), block_size=4, scale=1.0)
    assert out.shape == (0, 4, 16)


def _invalid_inputs():
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


@pytest.mark.parametrize("index", range(len(_invalid_inputs()[0])))
def test_invalid_inputs(index):
    cases, base = _invalid_inputs()
    change, message = cases[index]
    args = {**base, **change}
    with pytest.raises(ValueError, match=message):
        pa.paged_decode_attention(args.pop("q"), args.pop("k_cache"), args.pop("v_cache"), args.pop("block_tables"),
                                  args.pop("context_lens"), scale=1.0, **args)


@needs_gpu
def test_mismatched_devices():
    k = torch.zeros(32, 2, 16, device="cuda")
    with pytest.raises(ValueError, match="one device"):
        pa.paged_decode_attention(torch.zeros(2, 4, 16), k, k, torch.zeros(2, 3, dtype=torch.int32, device="cuda"),
                                  torch.ones(2, dtype=torch.int32, device="cuda"), block_size=4, scale=1.0)


# ---- GPU only: Llama-size shapes, default tiles, auto-planned splits --------------------------------


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("rows, max_len", [(64, 4096), (8, 4096), (2, 8192)], ids=str)
def test_gpu_llama_shapes(rows, max_len, dtype):
    gen = torch.Generator().manual_seed(rows)
    lens = torch.randint(1, max_len + 1, (rows,), generator=gen).tolist()
    lens[0] = max_len
    case = Case(lens, 32, 8, 128, 16, dtype, seed=rows)
    for splits in (None, 1):
        assert_matches(case.run(num_splits=splits), case.reference(), dtype)


@needs_gpu
@pytest.mark.parametrize("heads, kv_heads, head_dim",
                         [(32, 8, 256), (12, 12, 64), (64, 1, 80), (16, 16, 96), (8, 2, 8)], ids=str)
def test_gpu_head_shapes(heads, kv_heads, head_dim):
    case = Case((1, 17, 300, 2049), heads, kv_heads, head_dim, 16, torch.bfloat16, seed=head_dim)
    for splits in (1, 4):
        assert_matches(case.run(num_splits=splits), case.reference(), torch.bfloat16)


@needs_gpu
@pytest.mark.parametrize("block_n, num_warps, num_stages", [(32, 4, 2), (64, 8, 3), (128, 8, 2)], ids=str)
def test_gpu_knobs(block_n, num_warps, num_stages):
    case = Case((1, 777, 3000), 32, 8, 128, 16, torch.bfloat16, seed=9)
    for splits in (1, 5):
        got = case.run(num_splits=splits, block_n=block_n, num_warps=num_warps, num_stages=num_stages)
        assert_matches(got, case.reference(), torch.bfloat16)


@needs_gpu
def test_gpu_cuda_graph_replay():
    """The launcher never synchronises: capture it, change q and the context lengths in place, replay."""
    case = Case((100, 2000, 40), 32, 8, 128, 16, torch.bfloat16, seed=10)
    out = torch.empty_like(case.q)
    for splits in (1, 4):
        case.run(out=out, num_splits=splits)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            case.run(out=out, num_splits=splits)
        case.q.copy_(torch.randn_like(case.q))
        case.lens_list = [90, 1999, 1]
        case.lens.copy_(torch.tensor(case.lens_list, dtype=torch.int32))
        graph.replay()
        torch.cuda.synchronize()
        assert_matches(out, case.reference(), torch.bfloat16)
