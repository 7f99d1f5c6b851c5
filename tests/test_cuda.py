"""CUDA kernels against the CPU kernels and the reference (skipped without a GPU)."""
import pytest
import torch
from torch import nn
from torch.library import opcheck

from interp_ext import GuidedBackprop, Saliency, ops, reference

pytestmark = pytest.mark.needs_cuda

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def sample(shape, dtype):
    x = (torch.randn(shape, dtype=torch.float64) * 4).to(dtype)
    g = torch.randn(shape, dtype=torch.float64).to(dtype)
    x.view(-1)[::11] = 0
    x.view(-1)[5::13] = 6
    return g, x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
@pytest.mark.parametrize("upper", [None, 6.0])
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 1023), (2, 3, 17, 33), (8, 64, 56, 56)])
def test_guided_backward_cuda_equals_cpu(dtype, rule, upper, shape):
    g, x = sample(shape, dtype)
    cpu = ops.guided_relu_backward(g, x, upper, rule)
    cuda = ops.guided_relu_backward(g.cuda(), x.cuda(), upper, rule)
    assert cuda.is_cuda and cuda.dtype == dtype
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=0, atol=0)
    torch.testing.assert_close(cpu, reference.guided_relu_backward(g, x, upper, rule), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_guided_backward_cuda_misaligned_and_strided(dtype):
    g, x = sample((4099,), dtype)
    gc, xc = g.cuda(), x.cuda()
    # offset by one element: pointers not 16-byte aligned -> the scalar path
    got = ops.guided_relu_backward(gc[1:], xc[1:])
    torch.testing.assert_close(got.cpu(), reference.guided_relu_backward(g[1:], x[1:]), rtol=0, atol=0)
    g2, x2 = sample((6, 10, 12), dtype)
    got = ops.guided_relu_backward(g2.cuda().transpose(0, 2), x2.cuda().transpose(0, 2), 6.0)
    torch.testing.assert_close(got.cpu(), reference.guided_relu_backward(g2.transpose(0, 2), x2.transpose(0, 2), 6.0), rtol=0, atol=0)


def test_guided_backward_cuda_out_and_empty():
    g, x = sample((5, 7, 9), torch.float32)
    gc, xc = g.cuda(), x.cuda()
    out = torch.full_like(gc, float("nan"))
    ops.guided_relu_backward(gc, xc, 6.0, out=out)
    torch.testing.assert_close(out.cpu(), reference.guided_relu_backward(g, x, 6.0), rtol=0, atol=0)
    strided = torch.full((9, 7, 5), float("nan"), device="cuda").permute(2, 1, 0)
    ops.guided_relu_backward(gc, xc, out=strided)
    torch.testing.assert_close(strided.cpu(), reference.guided_relu_backward(g, x), rtol=0, atol=0)
    e = torch.empty(0, 4, device="cuda")
    assert ops.guided_relu_backward(e, e).shape == (0, 4)


def test_guided_backward_cuda_errors():
    with pytest.raises(RuntimeError, match="same device"):
        ops.guided_relu_backward(torch.ones(3, device="cuda"), torch.ones(3))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (3, 64, 33, 17), (16, 3, 224, 224)])
def test_saliency_reduce_cuda(dtype, shape):
    g = torch.randn(shape, dtype=torch.float64).to(dtype)
    got = ops.saliency_reduce(g.cuda())
    torch.testing.assert_close(got.cpu(), ops.saliency_reduce(g), rtol=0, atol=0)
    torch.testing.assert_close(got.cpu(), reference.saliency_reduce(g), rtol=0, atol=0)
    nc = g.transpose(2, 3)
    torch.testing.assert_close(ops.saliency_reduce(nc.cuda()).cpu(), reference.saliency_reduce(nc), rtol=0, atol=0)


def test_opcheck_cuda():
    x = torch.randn(3, 4, 5, device="cuda") * 4
    g = torch.randn(3, 4, 5, device="cuda")
    opcheck(torch.ops.interp_ext.guided_relu.default, (x.requires_grad_(), 6.0, "guided"))
    opcheck(torch.ops.interp_ext.guided_relu_backward.default, (g, x.detach(), None, "guided"))
    opcheck(torch.ops.interp_ext.saliency_reduce.default, (torch.randn(2, 3, 4, 5, device="cuda"),))


def test_methods_on_cuda_equal_cpu():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10),
    ).double()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    cpu_gb = GuidedBackprop(model).attribute(x, target=[1, 2, 3, 4])
    cpu_sal = Saliency(model).saliency_map(x, target=[1, 2, 3, 4])
    model.cuda()
    gb = GuidedBackprop(model).attribute(x.cuda(), target=[1, 2, 3, 4])
    sal = Saliency(model).saliency_map(x.cuda(), target=[1, 2, 3, 4])
    assert gb.is_cuda and sal.is_cuda
    torch.testing.assert_close(gb.cpu(), cpu_gb)
    torch.testing.assert_close(sal.cpu(), cpu_sal)


def test_inplace_variant_cuda():
    a = (torch.randn(64, 130, device="cuda", dtype=torch.float64) * 4).requires_grad_()
    x = a * 1.0
    before = x.detach().clone()
    ops.guided_relu_(x, 6.0)
    torch.testing.assert_close(x.detach(), before.clamp(0, 6))
    g = torch.randn_like(before)
    (grad,) = torch.autograd.grad(x, a, g)
    torch.testing.assert_close(grad, reference.guided_relu_backward(g, before, 6.0))


def test_grids_beyond_65535_rows_cuda_equal_cpu():
    # gridDim.y is capped at 65535: the Grad-CAM channel weights (one row per sample),
    # the TV partial sums (one per plane) and the tiled blur (one per 32 rows) loop past it
    a, g = torch.rand(65537, 3, 2, 2), torch.randn(65537, 3, 2, 2)
    for variant in ("gradcam", "gradcam++", "xgradcam"):
        torch.testing.assert_close(ops.gradcam(a.cuda(), g.cuda(), variant=variant).cpu(), ops.gradcam(a, g, variant=variant))
    x = torch.randn(700, 100, 1, 3, dtype=torch.float64)
    torch.testing.assert_close(ops.total_variation(x.cuda()).cpu(), ops.total_variation(x))
    tall = torch.randn(1, 1, 2_100_000, 3)
    taps = torch.rand(1, 5)
    torch.testing.assert_close(ops.separable_filter(tall.cuda(), taps.cuda(), taps.cuda()).cpu(),
                               ops.separable_filter(tall, taps, taps))


def test_occlusion_windows_beyond_the_border_cuda_equal_cpu():
    x, base = torch.randn(2, 3, 8, 8), torch.zeros(1, 3, 8, 8)
    for window, stride in (((3, 2, 2), (3, 5, 5)), ((1, 1, 1), (1, 1, 3)), ((1, 1, 2), (1, 1, 2**62))):
        total = ops.occlusion_window_count((3, 8, 8), window, stride)
        assert torch.equal(ops.occlusion_batch(x.cuda(), base.cuda(), window, stride, 0, total).cpu(),
                           ops.occlusion_batch(x, base, window, stride, 0, total))
