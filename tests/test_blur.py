"""gaussian_blur / separable_filter: reference, torchvision, borders, the adjoint backward."""
import functools

import numpy as np
import pytest
import torch
from torch.library import opcheck

from interp_ext import ops, reference

DTYPES = [(torch.float32, 1e-5), (torch.float64, 1e-12), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)]
PADDINGS = ["reflect", "replicate", "zeros"]


def _taps(n, k, dtype=torch.float32):
    return torch.rand(n, k, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype, tol", DTYPES)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("shape, kh, kw", [((2, 3, 9, 11), 3, 5), ((1, 2, 6, 7), 4, 2), ((2, 1, 5, 4), 9, 12),
                                           ((1, 1, 1, 6), 3, 3), ((3, 2, 16, 13), 1, 7),
                                           ((2, 2, 12, 75), 5, 9),  # rows: a register block, vectors, a tail
                                           ((1, 2, 10, 123), 9, 9)])  # float32: blocks of 8, 4, 2 and 1 vectors, a tail
def test_filter_matches_reference(dtype, tol, padding, shape, kh, kw):
    x = torch.randn(shape).to(dtype)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    for per_sample in (False, True):
        n = shape[0] if per_sample else 1
        th, tw = _taps(n, kh, compute), _taps(n, kw, compute)
        got = ops.separable_filter(x, th, tw, padding)
        want = reference.separable_filter(x.double(), th, tw, padding)
        assert got.dtype == dtype and got.shape == x.shape
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


def test_reference_borders_equal_numpy_pad():
    """The reference's index mapping against numpy.pad (periodic reflection when the pad
    is wider than the axis), so the native kernels are checked against a known oracle."""
    a = np.arange(5.0)
    for padding, mode in (("reflect", "reflect"), ("replicate", "edge")):
        for left, right in ((2, 2), (7, 9), (4, 0)):
            idx = reference.border_indices(5, left, right, padding).numpy()
            assert np.array_equal(a[idx], np.pad(a, (left, right), mode=mode))
    assert reference.border_indices(3, 2, 1, "zeros").tolist() == [-1, -1, 0, 1, 2, -1]


@pytest.mark.parametrize("sigma, kernel", [(1.0, 5), (2.0, 9), ((0.7, 1.6), (3, 7)), (3.0, 13)])
def test_blur_equals_torchvision(sigma, kernel):
    tvf = pytest.importorskip("torchvision.transforms.functional")
    x = torch.rand(2, 3, 32, 29)
    sh, sw = (sigma, sigma) if isinstance(sigma, float) else sigma
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    got = ops.gaussian_blur(x, sigma, kernel)
    want = tvf.gaussian_blur(x, kernel_size=[kw, kh], sigma=[sw, sh])  # torchvision: width first
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_default_kernel_size_and_per_sample_sigma():
    assert [ops.gaussian_kernel_size(s) for s in (0.5, 1.0, 1.2, 2.0)] == [5, 7, 9, 13]
    x = torch.rand(3, 2, 20, 20, dtype=torch.float64)
    sig = torch.tensor([0.5, 1.0, 2.0])
    got = ops.gaussian_blur(x, sig)  # kernel from the largest sigma: 13
    for i, s in enumerate(sig.tolist()):
        torch.testing.assert_close(got[i : i + 1], ops.gaussian_blur(x[i : i + 1], s, 13))
    # a wider Gaussian smooths more
    tv = lambda t: (t[..., 1:, :] - t[..., :-1, :]).abs().sum(dim=(1, 2, 3))
    assert (tv(got)[1:] < tv(got)[:-1]).all()
    hw = ops.gaussian_blur(x[:1], torch.tensor([[0.5, 2.0]]))
    torch.testing.assert_close(hw, ops.gaussian_blur(x[:1], (0.5, 2.0)))


def test_kernel_wider_than_the_image_is_periodic_reflection():
    x = torch.rand(1, 1, 4, 3, dtype=torch.float64)
    got = ops.gaussian_blur(x, 3.0, 19)
    taps = ops.gaussian_taps(torch.tensor([3.0]), 19)
    a = x[0, 0].numpy()
    padded = np.pad(a, ((9, 9), (9, 9)), mode="reflect")
    t = taps[0].numpy()
    want = np.zeros_like(a)
    for i in range(4):
        for j in range(3):
            want[i, j] = (t[:, None] * t[None, :] * padded[i : i + 19, j : j + 19]).sum()
    np.testing.assert_allclose(got[0, 0].numpy(), want, rtol=1e-12)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("shape, kh, kw", [((2, 2, 7, 6), 3, 4), ((1, 1, 3, 2), 7, 6), ((2, 1, 5, 9), 5, 1),
                                           ((1, 1, 4, 45), 3, 6)])
def test_gradcheck_and_adjoint(padding, shape, kh, kw):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    th, tw = _taps(shape[0], kh, torch.float64), _taps(1, kw, torch.float64)
    assert torch.autograd.gradcheck(lambda t: ops.separable_filter(t, th, tw, padding), (x,))
    # <B x, y> = <x, B^T y>
    y = torch.randn(shape, dtype=torch.float64)
    lhs = (ops.separable_filter(x.detach(), th, tw, padding) * y).sum()
    rhs = (x.detach() * torch.ops.interp_ext.separable_filter_backward(y, th, tw, padding)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_blur_gradient_in_float32_and_through_gaussian_blur():
    x = torch.rand(2, 3, 12, 12, requires_grad=True)
    ops.gaussian_blur(x, 1.5).square().sum().backward()
    xd = x.detach().double().requires_grad_(True)
    reference.separable_filter(xd, ops.gaussian_taps(torch.tensor([1.5]), 11), ops.gaussian_taps(torch.tensor([1.5]), 11)).square().sum().backward()
    torch.testing.assert_close(x.grad.double(), xd.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_number_sigmas_equal_tensor_sigmas(dtype):
    """A number or (sigma_h, sigma_w) takes the cached-taps path: the same numbers as the
    same sigmas given as a tensor, for each dtype in turn (the cache is kept per dtype)."""
    x = torch.randn(3, 2, 17, 23).to(dtype)  # N = 3: a (2,) tensor is then (sigma_h, sigma_w), not per sample
    f64 = functools.partial(torch.tensor, dtype=torch.float64)  # the same numbers as the Python floats
    for sigma, tensor in ((1.3, f64(1.3)), ((0.7, 1.6), f64([0.7, 1.6])), (2, f64(2.0))):
        for kernel_size in (None, 5, (3, 8)):
            want = ops.gaussian_blur(x, tensor, kernel_size)
            for _ in range(2):  # the first call fills the cache, the second reads it
                torch.testing.assert_close(ops.gaussian_blur(x, sigma, kernel_size), want, rtol=0, atol=0)


def test_traced_blur_keeps_the_taps_cache_eager():
    """Tracing with fake tensors makes the taps inside the trace: the cache stays free of
    traced values, and the traced graph equals the eager call."""
    from torch.fx.experimental.proxy_tensor import make_fx

    x = torch.randn(1, 2, 9, 9)
    ops._number_taps.cache_clear()
    traced = make_fx(lambda t: ops.gaussian_blur(t, 1.1), tracing_mode="fake")(x)
    assert ops._number_taps.cache_info().currsize == 0
    torch.testing.assert_close(traced(x), ops.gaussian_blur(x, 1.1), rtol=0, atol=0)
    assert ops._number_taps.cache_info().currsize == 1  # one entry: both axes have the same sigma and size


def test_non_contiguous_input():
    x = torch.rand(2, 9, 10, 3).permute(0, 3, 1, 2)
    torch.testing.assert_close(ops.gaussian_blur(x, 1.0), ops.gaussian_blur(x.contiguous(), 1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_out_buffer(dtype):
    """out= writes every element (the buffer is poisoned first), returns the buffer, equals
    the functional form through every write path: direct, a non-contiguous buffer and the
    input itself (both through a temporary), reduced precision (float32 compute)."""
    x = torch.randn(2, 3, 20, 41).to(dtype)
    want = ops.gaussian_blur(x, 1.3)
    out = torch.full_like(x, float("nan"))
    assert ops.gaussian_blur(x, 1.3, out=out) is out
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    strided = torch.full((2, 20, 41, 3), float("nan"), dtype=dtype).permute(0, 3, 1, 2)
    torch.testing.assert_close(ops.gaussian_blur(x, 1.3, out=strided), want, rtol=0, atol=0)
    inplace = x.clone()
    assert ops.gaussian_blur(inplace, 1.3, out=inplace) is inplace
    torch.testing.assert_close(inplace, want, rtol=0, atol=0)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    th, tw = _taps(1, 4, compute), _taps(2, 3, compute)
    ops.separable_filter(x, th, tw, "zeros", out=out)
    torch.testing.assert_close(out, ops.separable_filter(x, th, tw, "zeros"), rtol=0, atol=0)


def test_out_buffer_errors():
    x = torch.rand(1, 2, 8, 8)
    with pytest.raises(RuntimeError, match=r"separable_filter: out must have shape \[1, 2, 8, 8\]"):
        ops.gaussian_blur(x, 1.0, out=torch.empty(1, 2, 8, 7))
    with pytest.raises(RuntimeError, match="out must have dtype Float"):
        ops.gaussian_blur(x, 1.0, out=torch.empty(1, 2, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="out= is not differentiable"):
        ops.gaussian_blur(x.requires_grad_(True), 1.0, out=torch.empty(1, 2, 8, 8))
    with torch.no_grad():  # allowed without autograd
        ops.gaussian_blur(x, 1.0, out=torch.empty(1, 2, 8, 8))


def test_opcheck():
    x = torch.randn(2, 3, 8, 9)
    th, tw = _taps(2, 3), _taps(1, 4)
    opcheck(torch.ops.interp_ext.separable_filter.default, (x, th, tw, "reflect"))
    opcheck(torch.ops.interp_ext.separable_filter.out, (x, th, tw, "replicate"), {"out": torch.empty_like(x)})
    opcheck(torch.ops.interp_ext.separable_filter_backward.default, (x, th, tw, "zeros"))


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: ops.gaussian_blur(torch.rand(1, 3, 8, 8), 0.0), ValueError, "sigma must be positive"),
        (lambda: ops.gaussian_blur(torch.rand(1, 3, 8, 8), -1.0), ValueError, "sigma must be positive"),
        (lambda: ops.gaussian_blur(torch.rand(1, 3, 8, 8), (1.0, float("nan"))), ValueError, "sigma must be positive"),
        (lambda: ops.gaussian_blur(torch.rand(1, 3, 8, 8), float("inf")), ValueError, "sigma must be positive"),
        (lambda: ops.gaussian_blur(torch.rand(1, 3, 8, 8), torch.tensor(float("nan"))), ValueError, "sigma must be positive"),
        (lambda: ops.gaussian_blur(torch.rand(1, 3, 8, 8), (1.0, 2.0, 3.0)), ValueError, "sigma must be a number"),
        (lambda: ops.gaussian_blur(torch.rand(2, 3, 8, 8), torch.ones(3)), ValueError, r"sigma: a tensor must be"),
        (lambda: ops.gaussian_blur(torch.rand(1, 3, 8, 8), 1.0, 0), ValueError, "kernel_size must be a positive int"),
        (lambda: ops.gaussian_blur(torch.rand(3, 8, 8), 1.0), ValueError, r"x must be an \(N, C, H, W\)"),
        (lambda: ops.gaussian_blur(torch.rand(1, 3, 8, 8), 1.0, padding="circular"), RuntimeError, "padding must be"),
        (lambda: ops.separable_filter(torch.rand(2, 3, 8, 8), _taps(3, 3), _taps(1, 3)), RuntimeError, r"taps_h must be \(1 or N, k\)"),
        (lambda: ops.separable_filter(torch.rand(1, 3, 8, 8), _taps(1, 3, torch.float64), _taps(1, 3)), RuntimeError, "taps_h must be Float"),
        (lambda: ops.separable_filter(torch.rand(1, 3, 8, 8).int(), _taps(1, 3), _taps(1, 3)), RuntimeError, "floating-point"),
    ],
)
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype, tol", DTYPES)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("kh, kw", [(5, 5), (4, 9), (33, 3), (41, 7)])  # 41: the two-pass path
def test_cuda_equals_cpu(dtype, tol, padding, kh, kw):
    x = torch.randn(2, 3, 45, 70).to(dtype)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    th, tw = _taps(2, kh, compute), _taps(1, kw, compute)
    want = ops.separable_filter(x, th, tw, padding)
    got = ops.separable_filter(x.cuda(), th.cuda(), tw.cuda(), padding).cpu()
    torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol)
    g = torch.randn_like(x)
    want_b = torch.ops.interp_ext.separable_filter_backward(g, th, tw, padding)
    got_b = torch.ops.interp_ext.separable_filter_backward(g.cuda(), th.cuda(), tw.cuda(), padding).cpu()
    torch.testing.assert_close(got_b.double(), want_b.double(), rtol=tol, atol=tol)


@pytest.mark.needs_cuda
def test_cuda_out_buffer():
    x = torch.randn(2, 3, 40, 37, device="cuda")
    want = ops.gaussian_blur(x.cpu(), 1.5)
    out = torch.full_like(x, float("nan"))
    assert ops.gaussian_blur(x, 1.5, out=out) is out
    torch.testing.assert_close(out.cpu(), want)
    ops.gaussian_blur(x, 1.5, out=x)  # in place, through a temporary
    torch.testing.assert_close(x.cpu(), want)


@pytest.mark.needs_cuda
def test_cuda_many_planes_and_gradcheck():
    x = torch.randn(300, 250, 5, 6, device="cuda")  # more planes than a grid's z dimension takes
    torch.testing.assert_close(ops.gaussian_blur(x, 1.0).cpu(), ops.gaussian_blur(x.cpu(), 1.0))
    xd = torch.randn(1, 2, 6, 5, dtype=torch.float64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.gaussian_blur(t, 2.0, 9), (xd,))


def test_adjoint_refuses_pair_lists_beyond_int32():
    # H x taps pairs past 2^31 wrapped the int32 offsets and overflowed the heap
    with pytest.raises(RuntimeError, match="too large for the adjoint"):
        torch.ops.interp_ext.separable_filter_backward(torch.zeros(1, 1, 131072, 1), torch.ones(1, 32769),
                                                       torch.ones(1, 1), "reflect")
    empty = torch.zeros(0, 1, 4096, 1)
    assert torch.ops.interp_ext.separable_filter_backward(empty, torch.ones(1, 9), torch.ones(1, 1), "reflect").shape == empty.shape
