"""regularize_step_: the fused Yosinski et al. step against the reference, each part on
its own, in place, bad inputs, CUDA."""
import pytest
import torch
from torch.library import opcheck

from interp_ext import ops, reference

SETTINGS = [
    dict(lr=0.5),
    dict(lr=1.0, decay=0.1),
    dict(lr=0.3, grad_percentile=40.0),
    dict(lr=0.3, norm_percentile=30.0),
    dict(lr=0.3, contribution_percentile=25.0),
    dict(lr=0.7, decay=0.05, grad_percentile=10.0, norm_percentile=20.0, contribution_percentile=20.0),
]


@pytest.mark.parametrize("kwargs", SETTINGS)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_matches_reference(kwargs, dtype, tol):
    x = torch.randn(3, 3, 9, 11, dtype=dtype)
    g = torch.randn_like(x)
    want = reference.regularize_step(x, g, **kwargs)
    got = x.clone()
    assert ops.regularize_step_(got, g, **{k: v for k, v in kwargs.items() if k != "lr"}, lr=kwargs["lr"]) is got
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


def test_each_clip_removes_about_its_percentile():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 20, 20)
    g = torch.randn_like(x)
    out = x.clone()
    ops.regularize_step_(out, g, lr=0.0, norm_percentile=30.0)
    zero_pixels = (out.abs().sum(1) == 0).float().mean(dim=(1, 2))
    assert ((zero_pixels - 0.3).abs() < 0.01).all()
    out = x.clone()
    ops.regularize_step_(out, g, lr=1.0, grad_percentile=50.0)
    moved = (out != x).float().mean()
    assert abs(float(moved) - 0.5) < 0.01


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pct", [10.0, 12.3, 37.5, 50.0, 62.0, 99.0])
def test_percentile_thresholds_equal_torch_quantile(dtype, pct):
    """The gradient clip keeps |g| >= the per-sample percentile exactly as torch.quantile
    (in g's dtype) puts it: ties (integer values, 1000 per sample), interpolation between
    distinct values (7 per sample, fractional ranks) and large samples, tied or not. A
    mask only pins the threshold between two order statistics: whole ranks (the threshold
    is the order statistic itself) catch a selection one rank too high, fractional ones
    one too low."""
    torch.manual_seed(0)
    big = torch.randn(2, 3, 120, 130, dtype=dtype)  # 46800 per sample: every radix-selection pass
    rounded = (big * 100).round() / 100 * (torch.rand_like(big) > 0.3)  # many ties, 30% zeros (some -0.0)
    whole_rank = torch.randn(2, 1, 17, 2753, dtype=dtype)  # M - 1 = 46800: every pct here gives a whole rank
    for g in (torch.randint(-5, 6, (3, 2, 20, 25)).to(dtype), torch.randn(4, 1, 1, 7, dtype=dtype), big, rounded,
              whole_rank):
        got = torch.zeros_like(g)
        ops.regularize_step_(got, g, lr=1.0, grad_percentile=pct)  # x = 0: the kept gradient itself
        t = torch.quantile(g.abs().reshape(len(g), -1), pct / 100, dim=1).view(-1, 1, 1, 1)
        assert torch.equal(got, torch.where(g.abs() >= t, g, torch.zeros_like(g)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_gives_the_quantile_nan_threshold(dtype):
    """A NaN in a sample makes its percentile NaN, as torch.quantile (and so the CUDA
    step) has it: every gradient (or pixel) of that sample is clipped, the others are not."""
    x = torch.randn(3, 2, 10, 12, dtype=dtype)
    g = torch.randn_like(x)
    g[1, 0, 3, 4] = float("nan")
    for kwargs, xs in ((dict(grad_percentile=20.0), torch.zeros_like(x)), (dict(norm_percentile=20.0), x.clone())):
        if "norm_percentile" in kwargs:
            xs[2, 1, 5, 6] = float("nan")
        want = reference.regularize_step(xs, g, 1.0, dtype=None, **kwargs)
        got = xs.clone()
        ops.regularize_step_(got, g, 1.0, **kwargs)
        assert torch.equal(got, want)
        nan_sample = 1 if "grad_percentile" in kwargs else 2
        assert torch.equal(got[nan_sample], torch.zeros_like(got[nan_sample])) and got[0].ne(0).any()


def test_half_precision_and_non_contiguous():
    x = torch.randn(2, 3, 8, 8)
    g = torch.randn_like(x)
    want = reference.regularize_step(x.half().float(), g.half().float(), 0.5, decay=0.1, norm_percentile=20.0)
    got = x.half()
    ops.regularize_step_(got, g.half(), 0.5, decay=0.1, norm_percentile=20.0)
    torch.testing.assert_close(got.double(), want, rtol=2e-3, atol=2e-3)
    xt = x.transpose(2, 3)  # in place on a non-contiguous view
    gt = g.transpose(2, 3)
    want_t = reference.regularize_step(xt, gt, 0.5, decay=0.1)
    ops.regularize_step_(xt, gt, 0.5, decay=0.1)
    torch.testing.assert_close(xt.double(), want_t)


def test_opcheck():
    x = torch.randn(2, 3, 5, 6)
    opcheck(torch.ops.interp_ext.regularize_step_.default, (x, torch.randn_like(x), 0.5, 0.1, 10.0, 20.0, 30.0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(decay=1.0), r"decay must be in \[0, 1\)"),
        (dict(norm_percentile=100.0), r"norm_percentile must be in \[0, 100\)"),
        (dict(grad_percentile=-1.0), r"grad_percentile must be in \[0, 100\)"),
        (dict(lr=float("nan")), "lr must be finite"),
    ],
)
def test_bad_inputs(kwargs, match):
    x = torch.randn(1, 3, 4, 4)
    before = x.clone()
    with pytest.raises(RuntimeError, match=match):
        ops.regularize_step_(x, torch.randn_like(x), **{"lr": 0.5, **kwargs})
    assert torch.equal(x, before)  # nothing written
    with pytest.raises(RuntimeError, match="grad must have x's shape"):
        ops.regularize_step_(x, torch.randn(1, 3, 4, 5), 0.5)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("kwargs", SETTINGS)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_cuda_equals_cpu(kwargs, dtype, tol):
    x = torch.randn(3, 3, 33, 17).to(dtype)
    g = torch.randn_like(x)
    want, got = x.clone(), x.cuda()
    lr = kwargs["lr"]
    rest = {k: v for k, v in kwargs.items() if k != "lr"}
    ops.regularize_step_(want, g, lr, **rest)
    ops.regularize_step_(got, g.cuda(), lr, **rest)
    torch.testing.assert_close(got.cpu().double(), want.double(), rtol=tol, atol=tol)


def test_grad_sharing_memory_with_x_is_refused():
    # x is written in place while grad is read: an alias gives silently wrong steps
    buf = torch.randn(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match="grad must not share memory with x"):
        ops.regularize_step_(buf, buf, 0.1)
    flat = torch.randn(2 * 48 + 8)
    x, g = flat[:96].view(2, 3, 4, 4), flat[8:104].view(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match="grad must not share memory with x"):
        ops.regularize_step_(x, g, 0.1)
