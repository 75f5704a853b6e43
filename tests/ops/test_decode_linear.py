"""decode_linear (steer/engine/decode_linear.py) and the kernel under it (steer._C.decode_matmul):
the same numbers as F.linear / x @ W + b over odd shapes, both weight layouts, every weight dtype,
strided weights and batched x; the kernel is taken exactly where it should be; bad input fails."""

import pytest
import torch
import torch.nn.functional as F

import steer._C as ext
from steer.ops import decode_linear as module
from steer.ops.decode_linear import MAX_KERNEL_ROWS, decode_linear, uses_kernel

ROWS = (1, 2, 3, 5, 8, 13, 17, 33)
# (out, in): ones, primes below and above the vector width (8) and tile sizes (3, 4, 24).
SHAPES = ((1, 1), (7, 37), (37, 7), (129, 515), (515, 129), (1, 515), (515, 1))
WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
FLOAT32, BF16 = 0, 2  # steer._C dtype codes
OUT_IN, IN_OUT = 0, 1  # steer._C layout codes


@pytest.fixture(autouse=True)
def kernel_for_every_weight_size(monkeypatch):
    """The small weights of these tests would go to torch's GEMM (KERNEL_MIN_WEIGHT_BYTES): let
    them reach the kernel, whose numbers are what is tested here."""
    monkeypatch.setattr(module, "KERNEL_MIN_WEIGHT_BYTES", 0)


def make_weight(n_out: int, n_in: int, layout: str, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (n_out, n_in) if layout == "out_in" else (n_in, n_out)
    return torch.randn(shape, generator=gen).to(dtype)


def reference(x, weight, bias, layout):
    """float64 x @ W^T + b of the weight's exact values, and a bound on each element's float32
    rounding: sum_k |x w| + |b| (the scale that accumulation-order differences are relative to)."""
    w = weight.double() if layout == "in_out" else weight.double().T
    exact = x.double() @ w
    bound = x.double().abs() @ w.abs()
    if bias is not None:
        exact, bound = exact + bias.double(), bound + bias.double().abs()
    return exact, bound


def assert_matches(y, x, weight, bias, layout, rel=1e-5):
    exact, bound = reference(x, weight, bias, layout)
    err = (y.double() - exact).abs()
    assert (err <= rel * bound + 1e-30).all(), f"max error {(err / bound.clamp_min(1e-30)).max().item():.3g} of the scale"


@pytest.mark.parametrize("layout", ["out_in", "in_out"])
@pytest.mark.parametrize("dtype", WEIGHT_DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("rows", ROWS)
def test_matches_torch(layout, dtype, rows):
    """float32 x against a float32 / bfloat16 / float16 weight, with and without bias; float32 up
    to MAX_KERNEL_ROWS rows (33 goes to torch), half-precision weights at any row count."""
    with torch.inference_mode():
        for n_out, n_in in SHAPES:
            weight = make_weight(n_out, n_in, layout, dtype, seed=n_out * 1000 + n_in)
            x = torch.randn(rows, n_in)
            bias = torch.randn(n_out)
            assert uses_kernel(x, weight, layout=layout) == (dtype != torch.float32 or rows <= MAX_KERNEL_ROWS[dtype])
            for b in (None, bias):
                y = decode_linear(x, weight, b, layout=layout)
                assert y.shape == (rows, n_out) and y.dtype == torch.float32
                assert_matches(y, x, weight, b, layout)


@pytest.mark.parametrize("layout", ["out_in", "in_out"])
def test_float32_equals_torch_to_rounding(layout):
    """The comparison the engine cares about: decode_linear vs the torch call it replaces."""
    weight, bias, x = make_weight(515, 129, layout), torch.randn(515), torch.randn(5, 129)
    with torch.inference_mode():
        want = F.linear(x, weight, bias) if layout == "out_in" else torch.addmm(bias, x, weight)
        torch.testing.assert_close(decode_linear(x, weight, bias, layout=layout), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=lambda d: str(d)[6:])
def test_half_x_with_half_weight_gives_half_output(dtype):
    weight, bias = make_weight(129, 515, "out_in", dtype), torch.randn(129).to(dtype)
    x = torch.randn(3, 515).to(dtype)
    with torch.inference_mode():
        assert uses_kernel(x, weight, bias)
        y = decode_linear(x, weight, bias)
        want = F.linear(x.float(), weight.float(), bias.float())
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), want.to(dtype).float(), rtol=1e-2, atol=1e-2)


def strided_weights(layout: str) -> dict[str, tuple[torch.Tensor, bool]]:
    """Views of a [out=37, in=129] layer's weight: name -> (weight, read in place by the kernel)."""
    n_out, n_in = 37, 129
    outer, inner = (n_out, n_in) if layout == "out_in" else (n_in, n_out)
    gen = torch.Generator().manual_seed(1)
    return {
        "padded rows": (torch.randn(outer, inner + 11, generator=gen)[:, :inner], True),
        "transposed": (torch.randn(inner, outer, generator=gen).T, True),
        "transposed, padded": (torch.randn(inner, outer + 5, generator=gen)[:, :outer].T, True),
        "every other element": (torch.randn(outer, 2 * inner, generator=gen)[:, ::2], False),
    }


@pytest.mark.parametrize("layout", ["out_in", "in_out"])
@pytest.mark.parametrize("name", list(strided_weights("out_in")))
def test_strided_weights_are_read_in_place_or_fall_back(layout, name):
    weight, in_place = strided_weights(layout)[name]
    bias = torch.randn(37)
    x = torch.randn(5, 129)
    with torch.inference_mode():
        assert uses_kernel(x, weight, bias, layout=layout) == in_place
        assert_matches(decode_linear(x, weight, bias, layout=layout), x, weight, bias, layout)


@pytest.mark.parametrize("layout", ["out_in", "in_out"])
def test_batched_and_strided_x(layout):
    weight, bias = make_weight(37, 129, layout), torch.randn(37)
    x = torch.randn(2, 3, 129)
    with torch.inference_mode():
        y = decode_linear(x, weight, bias, layout=layout)
        assert y.shape == (2, 3, 37)
        assert_matches(y.reshape(6, 37), x.reshape(6, 129), weight, bias, layout)
        # x with row stride 2 * in (every other row of a bigger tensor), and a transposed batch.
        for view in (torch.randn(8, 129)[::2], torch.randn(3, 2, 129).transpose(0, 1)):
            y = decode_linear(view, weight, bias, layout=layout)
            assert_matches(y.reshape(-1, 37), view.reshape(-1, 129), weight, bias, layout)
        assert decode_linear(torch.empty(0, 129), weight, bias, layout=layout).shape == (0, 37)


def test_the_kernel_runs_exactly_where_uses_kernel_says(monkeypatch):
    calls = []

    class Spy:
        def decode_matmul(self, *args):
            calls.append(args[1])  # T
            return ext.decode_matmul(*args)

    monkeypatch.setattr(module, "_extension", lambda: Spy())
    weight = make_weight(64, 32, "out_in")
    limit = MAX_KERNEL_ROWS[torch.float32]
    with torch.inference_mode():
        decode_linear(torch.randn(limit, 32), weight)
        decode_linear(torch.randn(limit + 1, 32), weight)  # torch's GEMM
        decode_linear(torch.randn(limit + 1, 32), weight.bfloat16())  # half weight, float32 x: kernel
        decode_linear(torch.randn(3, 32).double(), weight.double())  # float64: torch
    assert calls == [limit, limit + 1]


def test_weights_that_stay_in_cache_go_to_torch_where_x_shares_their_dtype(monkeypatch):
    monkeypatch.undo()  # the module's real threshold
    small_elements = module.KERNEL_MIN_WEIGHT_BYTES // 4 - 1
    small, large = torch.randn(small_elements, 1), torch.randn(module.KERNEL_MIN_WEIGHT_BYTES // 4, 1)
    x = torch.randn(4, 1)
    with torch.inference_mode():
        assert not uses_kernel(x, small) and uses_kernel(x, large)
        assert uses_kernel(x, small.bfloat16())  # float32 x, half weight: torch would copy the weight
        torch.testing.assert_close(decode_linear(x, small), F.linear(x, small))


def test_autograd_falls_back_to_torch():
    weight = make_weight(7, 37, "out_in").requires_grad_()
    x = torch.randn(3, 37)
    assert not uses_kernel(x, weight)
    y = decode_linear(x, weight)
    assert y.requires_grad
    y.sum().backward()
    torch.testing.assert_close(weight.grad, x.sum(0).expand(7, 37))
    with torch.no_grad():
        assert uses_kernel(x, weight)  # no graph is recorded: the kernel is fine


@pytest.mark.parametrize("layout", ["out_in", "in_out"])
def test_same_result_on_one_and_two_threads(layout):
    """Every output is computed by the same operations in the same order whichever thread owns it."""
    weight = make_weight(1029, 515, layout)  # big enough to be threaded
    x = torch.randn(6, 515)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = decode_linear(x, weight, layout=layout)
        torch.set_num_threads(2)
        two = decode_linear(x, weight, layout=layout)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_bad_python_input():
    weight = make_weight(7, 37, "out_in")
    with pytest.raises(ValueError, match="layout"):
        decode_linear(torch.randn(2, 37), weight, layout="in")
    with pytest.raises(RuntimeError):  # a shape mismatch goes to torch, which names it
        decode_linear(torch.randn(2, 36), weight)


def call(x=None, T=2, Kin=4, ldx=4, w=None, dtype=FLOAT32, layout=OUT_IN, N=3, ldw=None, bias=0, y=None, ldy=3):
    """steer._C.decode_matmul with valid defaults for [T=2, Kin=4] @ [N=3, Kin=4]^T."""
    x = torch.ones(2, 4) if x is None else x
    w = torch.ones(3, 4) if w is None else w
    y = torch.empty(2, 3) if y is None else y
    ldw = (Kin if layout == OUT_IN else N) if ldw is None else ldw
    ext.decode_matmul(
        x if isinstance(x, int) else x.data_ptr(), T, Kin, ldx, w if isinstance(w, int) else w.data_ptr(),
        dtype, layout, N, ldw, bias, y if isinstance(y, int) else y.data_ptr(), ldy, 1,
    )  # fmt: skip
    return y


def test_raw_binding_checks_its_arguments():
    assert torch.equal(call(), torch.full((2, 3), 4.0))
    bad = [
        dict(x=0), dict(w=0), dict(y=0),  # null pointers where data is needed
        dict(T=-1), dict(N=-1), dict(Kin=-1),
        dict(ldx=3), dict(ldy=2), dict(ldw=3),  # a row stride shorter than the row
        dict(layout=2),
    ]
    for arguments in bad:
        with pytest.raises(ValueError, match="decode_matmul"):
            call(**arguments)
    with pytest.raises(ValueError, match="dtype"):
        call(dtype=7)


def test_raw_binding_edge_sizes():
    bias = torch.tensor([1.0, 2.0, 3.0])
    # Kin == 0: an empty sum, y is the bias (x and w may be null).
    assert torch.equal(call(x=0, Kin=0, w=0, ldw=0, bias=bias.data_ptr()), bias.expand(2, 3))
    # T == 0 or N == 0: nothing to do, nothing read.
    call(x=0, T=0, w=0, y=0)
    call(w=0, N=0, y=0)
    # One row, ldx and ldy unused.
    assert torch.equal(call(T=1, ldx=0, ldy=0, y=torch.zeros(1, 3)), torch.full((1, 3), 4.0))
    # in_out [Kin=4, N=3] of bfloat16 ones.
    y = call(w=torch.ones(4, 3, dtype=torch.bfloat16), dtype=BF16, layout=IN_OUT)
    assert torch.equal(y, torch.full((2, 3), 4.0))
