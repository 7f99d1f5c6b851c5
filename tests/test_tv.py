"""total_variation: reference, gradient (gradcheck and against autograd of the reference),
dtypes, opcheck, bad inputs, CUDA."""
import pytest
import torch
from torch.library import opcheck

from interp_ext import ops, reference

DTYPES = [(torch.float32, 1e-5), (torch.float64, 1e-12), (torch.float16, 3e-3), (torch.bfloat16, 2e-2)]
SHAPES = [(2, 3, 7, 9), (1, 1, 1, 5), (3, 2, 4, 1), (1, 3, 1, 1)]


@pytest.mark.parametrize("dtype, tol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("beta", [2.0, 1.0, 3.0])
def test_matches_reference(dtype, tol, shape, beta):
    x = torch.randn(shape).to(dtype)
    got = ops.total_variation(x, beta)
    want = reference.total_variation(x.double(), beta)
    assert got.shape == (shape[0],) and got.dtype == dtype
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


def test_beta_two_is_the_sum_of_squared_differences():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    want = (x[..., 1:] - x[..., :-1]).square().sum((1, 2, 3)) + (x[..., 1:, :] - x[..., :-1, :]).square().sum((1, 2, 3))
    torch.testing.assert_close(ops.total_variation(x), want)
    assert torch.equal(ops.total_variation(torch.ones(1, 3, 5, 5)), torch.zeros(1))


@pytest.mark.parametrize("beta", [2.0, 1.5, 3.0])
@pytest.mark.parametrize("shape", [(2, 2, 5, 4), (1, 1, 1, 4), (1, 2, 3, 1)])
def test_gradcheck(beta, shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.total_variation(t, beta), (x,))


@pytest.mark.parametrize("beta", [2.0, 1.0])
def test_gradient_equals_autograd_of_the_reference(beta):
    x = torch.randn(3, 2, 6, 7, requires_grad=True)
    w = torch.randn(3)
    (ops.total_variation(x, beta) * w).sum().backward()
    xr = x.detach().double().requires_grad_(True)
    (reference.total_variation(xr, beta) * w.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-4, atol=1e-5)


def test_flat_regions_have_zero_gradient_for_beta_below_two():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    ops.total_variation(x, 1.0).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_opcheck_and_empty():
    x = torch.randn(2, 3, 5, 6)
    opcheck(torch.ops.interp_ext.total_variation.default, (x, 2.0))
    opcheck(torch.ops.interp_ext.total_variation_backward.default, (torch.randn(2), x, 1.5))
    assert ops.total_variation(torch.empty(0, 3, 4, 4)).shape == (0,)
    assert torch.equal(ops.total_variation(torch.empty(2, 0, 4, 4)), torch.zeros(2))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ops.total_variation(torch.rand(3, 4, 4)), r"x must be \(N, C, H, W\)"),
        (lambda: ops.total_variation(torch.rand(1, 3, 4, 4), 0.0), "beta must be positive"),
        (lambda: ops.total_variation(torch.rand(1, 3, 4, 4).int()), "floating-point"),
        (lambda: torch.ops.interp_ext.total_variation_backward(torch.ones(2), torch.rand(1, 3, 4, 4), 2.0), r"grad must be \(N,\)"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype, tol", DTYPES)
@pytest.mark.parametrize("beta", [2.0, 1.0])
def test_cuda_equals_cpu(dtype, tol, beta):
    x = torch.randn(3, 3, 67, 130).to(dtype)
    torch.testing.assert_close(ops.total_variation(x.cuda(), beta).cpu().double(),
                               ops.total_variation(x, beta).double(), rtol=tol * 10, atol=tol * 10)
    g = torch.randn(3).to(dtype)
    got = torch.ops.interp_ext.total_variation_backward(g.cuda(), x.cuda(), beta).cpu()
    want = torch.ops.interp_ext.total_variation_backward(g, x, beta)
    torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol)


def test_empty_input_allocates_nothing_per_plane():
    # (2^16, 2^14, 0, 1) holds no element; the CPU kernel used to allocate 8 GB of plane sums
    x = torch.zeros(2**16, 2**14, 0, 1)
    assert torch.equal(ops.total_variation(x), torch.zeros(2**16))
