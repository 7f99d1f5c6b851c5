"""Property-based tests of every native op against interp_ext.reference (hypothesis).

Shapes (empty batches, 1-pixel planes), dtypes, memory layouts (channels-last,
transposed, strided slices), parameters (windows beyond the border, kernels wider than
the image, every variant and padding) and out= buffers are drawn; values come from a
seeded torch generator. Derandomized, so CI runs the same examples every time, and
bounded to a few seconds.
"""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from interp_ext import ops, reference

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None)
FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# the op accumulates in float32 (float64 for float64); the reference runs in float64
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
LAYOUTS = ["contiguous", "channels_last", "transposed", "strided"]


def laid_out(values: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values (N, C, H, W) in another memory layout."""
    if layout == "channels_last":
        return values.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":
        return values.transpose(2, 3).contiguous().transpose(2, 3)
    if layout == "strided":
        wide = values.new_zeros((*values.shape[:3], 2 * values.shape[3]))
        wide[..., ::2] = values
        return wide[..., ::2]
    return values.contiguous()


def randn(seed: int, shape, dtype, layout="contiguous", scale=1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return laid_out((torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype), layout)


seeds = st.integers(0, 2**31 - 1)
images = st.tuples(st.integers(0, 3), st.integers(1, 4), st.integers(1, 12), st.integers(1, 12))


@FUZZ
@given(seed=seeds, n=st.integers(0, 300), dtype=st.sampled_from(FLOATS), rule=st.sampled_from(["guided", "deconvnet"]),
       upper=st.sampled_from([None, 6.0, 3.3, 0.1, 1.0]), strided_out=st.booleans())
def test_guided_relu_backward(seed, n, dtype, rule, upper, strided_out):
    g, x = randn(seed, (n,), dtype), randn(seed + 1, (n,), dtype, scale=4.0)
    want = reference.guided_relu_backward(g, x, upper, rule)  # in the dtype: the bound is the dtype's
    assert torch.equal(ops.guided_relu_backward(g, x, upper, rule), want)
    out = torch.full((2 * n,), 7.0, dtype=dtype)[::2] if strided_out else torch.empty(n, dtype=dtype)
    ops.guided_relu_backward(g, x, upper, rule, out=out)
    assert torch.equal(out, want)


@FUZZ
@given(seed=seeds, shape=images, dtype=st.sampled_from(FLOATS), layout=st.sampled_from(LAYOUTS))
def test_saliency_reduce(seed, shape, dtype, layout):
    g = randn(seed, shape, dtype, layout)
    assert torch.equal(ops.saliency_reduce(g), reference.saliency_reduce(g))


@FUZZ
@given(seed=seeds, shape=images, dtype=st.sampled_from([torch.float32, torch.float64]),
       layout=st.sampled_from(LAYOUTS), variant=st.sampled_from(list(reference.GRADCAM_VARIANTS)),
       relu=st.booleans(), normalize=st.booleans(),
       size=st.one_of(st.none(), st.tuples(st.integers(1, 20), st.integers(1, 20))))
def test_gradcam_and_cam(seed, shape, dtype, layout, variant, relu, normalize, size):
    a = randn(seed, shape, dtype, layout).relu()
    g = randn(seed + 1, shape, dtype, layout, scale=1e-2)
    want = reference.gradcam(a.double(), g.double(), variant, relu, size, normalize)
    torch.testing.assert_close(ops.gradcam(a, g, variant=variant, relu=relu, output_size=size, normalize=normalize).double(),
                               want, rtol=1e-4, atol=1e-4 if dtype == torch.float32 else 1e-10)
    fc = randn(seed + 2, (5, shape[1]), dtype)
    idx = torch.randint(0, 5, (shape[0],), generator=torch.Generator().manual_seed(seed))
    want = reference.cam(a.double(), fc.double(), idx, relu, size, normalize)
    torch.testing.assert_close(ops.cam(a, fc, idx, relu=relu, output_size=size, normalize=normalize).double(), want,
                               rtol=1e-4, atol=1e-4 if dtype == torch.float32 else 1e-10)


@st.composite
def occlusion_geometry(draw):
    c, h, w = draw(st.integers(1, 4)), draw(st.integers(1, 10)), draw(st.integers(1, 10))
    window = [draw(st.integers(1, d)) for d in (c, h, w)]
    stride = [draw(st.integers(1, d + 2)) for d in (c, h, w)]  # may exceed the window and the image
    return (c, h, w), window, stride


@FUZZ
@given(seed=seeds, n=st.integers(0, 3), geometry=occlusion_geometry(), dtype=st.sampled_from(FLOATS),
       layout=st.sampled_from(LAYOUTS), per_sample_baseline=st.booleans(), data=st.data())
def test_occlusion_batch_at_and_accumulate(seed, n, geometry, dtype, layout, per_sample_baseline, data):
    shape, window, stride = geometry
    total = ops.occlusion_window_count(shape, window, stride)
    x = randn(seed, (n, *shape), dtype, layout)
    base = randn(seed + 1, (n if per_sample_baseline and n else 1, *shape), dtype)
    start = data.draw(st.integers(0, total), label="start")
    count = data.draw(st.integers(0, total - start), label="count")
    want = reference.occlusion_batch(x, base, window, stride, start, count)
    assert torch.equal(ops.occlusion_batch(x, base, window, stride, start, count), want)
    out = torch.empty((count * n, *shape), dtype=dtype)
    assert torch.equal(ops.occlusion_batch(x, base, window, stride, start, count, out=out), want)
    ids = torch.randint(0, total, (data.draw(st.integers(0, 4), label="copies"), n),
                        generator=torch.Generator().manual_seed(seed))
    assert torch.equal(ops.occlusion_batch_at(x, base, window, stride, ids),
                       reference.occlusion_batch_at(x, base, window, stride, ids))
    diffs = randn(seed + 2, (n, total), dtype)
    torch.testing.assert_close(ops.occlusion_accumulate(diffs, shape, window, stride).double(),
                               reference.occlusion_accumulate(diffs.double(), shape, window, stride),
                               rtol=TOL[dtype], atol=TOL[dtype])


@FUZZ
@given(seed=seeds, shape=images, dtype=st.sampled_from(FLOATS), layout=st.sampled_from(LAYOUTS),
       features=st.integers(1, 6), copies=st.integers(0, 4), per_sample_mask=st.booleans(),
       per_channel_mask=st.booleans(), use_out=st.booleans())
def test_feature_batch(seed, shape, dtype, layout, features, copies, per_sample_mask, per_channel_mask, use_out):
    n, c, h, w = shape
    x = randn(seed, shape, dtype, layout)
    base = randn(seed + 1, (1, c, h, w), dtype)
    gen = torch.Generator().manual_seed(seed)
    mask = torch.randint(0, features, (n if per_sample_mask and n else 1, c if per_channel_mask else 1, h, w), generator=gen)
    present = torch.rand(copies, features, generator=gen) > 0.5
    want = reference.feature_batch(x, base, mask, present)
    out = torch.empty((copies * n, c, h, w), dtype=dtype) if use_out else None
    assert torch.equal(ops.feature_batch(x, base, mask, present, out=out), want)


@FUZZ
@given(seed=seeds, shape=images, dtype=st.sampled_from(FLOATS), layout=st.sampled_from(LAYOUTS),
       kh=st.integers(1, 15), kw=st.integers(1, 15), padding=st.sampled_from(["reflect", "replicate", "zeros"]),
       per_sample=st.booleans(), out_kind=st.sampled_from([None, "fresh", "inplace"]))
def test_separable_filter_and_adjoint(seed, shape, dtype, layout, kh, kw, padding, per_sample, out_kind):
    x = randn(seed, shape, dtype, layout)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    gen = torch.Generator().manual_seed(seed)
    rows = shape[0] if per_sample and shape[0] else 1
    th, tw = torch.rand(rows, kh, generator=gen).to(compute), torch.rand(rows, kw, generator=gen).to(compute)
    want = reference.separable_filter(x.double(), th, tw, padding)
    if out_kind is None:
        got = ops.separable_filter(x, th, tw, padding)
    else:
        got = ops.separable_filter(x, th, tw, padding, out=x.clone() if out_kind == "inplace" else torch.empty_like(x))
    torch.testing.assert_close(got.double(), want, rtol=TOL[dtype], atol=TOL[dtype])
    xd = x.double().requires_grad_()
    grad = randn(seed + 3, shape, torch.float64)
    (adjoint,) = torch.autograd.grad(reference.separable_filter(xd, th.double(), tw.double(), padding), xd, grad,
                                     allow_unused=True, materialize_grads=True)
    got = torch.ops.interp_ext.separable_filter_backward(grad, th.double(), tw.double(), padding)
    torch.testing.assert_close(got, adjoint, rtol=1e-10, atol=1e-10)


@FUZZ
@given(seed=seeds, shape=images, dtype=st.sampled_from(FLOATS), layout=st.sampled_from(LAYOUTS),
       beta=st.sampled_from([2.0, 1.0, 0.5, 3.0]))
def test_total_variation_and_gradient(seed, shape, dtype, layout, beta):
    x = randn(seed, shape, dtype, layout)
    tol = TOL[dtype] * max(1.0, x.numel() ** 0.5)  # a sum over the plane
    torch.testing.assert_close(ops.total_variation(x, beta).double(), reference.total_variation(x.double(), beta),
                               rtol=tol, atol=tol)
    xd = randn(seed, shape, torch.float64, layout).requires_grad_()
    grad = randn(seed + 1, (shape[0],), torch.float64)
    (want,) = torch.autograd.grad(reference.total_variation(xd, beta), xd, grad, allow_unused=True,
                                  materialize_grads=True)
    torch.testing.assert_close(torch.ops.interp_ext.total_variation_backward(grad, xd.detach(), beta), want,
                               rtol=1e-8, atol=1e-8)


@FUZZ
@given(seed=seeds, shape=images, layout=st.sampled_from(LAYOUTS), lr=st.floats(-2, 2), decay=st.floats(0, 0.9),
       pcts=st.tuples(*[st.sampled_from([0.0, 10.0, 50.0, 99.0, 99.9]) for _ in range(3)]))
def test_regularize_step(seed, shape, layout, lr, decay, pcts):
    # float64: the thresholds are order statistics of values computed the same way on both sides
    x, g = randn(seed, shape, torch.float64, layout), randn(seed + 1, shape, torch.float64, layout)
    want = reference.regularize_step(x, g, lr, decay, *pcts)
    ops.regularize_step_(x, g, lr, decay=decay, grad_percentile=pcts[0], norm_percentile=pcts[1],
                         contribution_percentile=pcts[2])
    torch.testing.assert_close(x, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_hold_the_same_values(layout):
    v = torch.randn(2, 3, 4, 5)
    t = laid_out(v, layout)
    assert torch.equal(t, v) and (layout == "contiguous") == t.is_contiguous()
