"""The native Grad-CAM reduction and CAM ops against interp_ext.reference."""
import pytest
import torch
from torch.library import opcheck

from interp_ext import ops, reference

VARIANTS = list(reference.GRADCAM_VARIANTS)
# accumulation is float32 for the reduced types, so only the output rounding differs
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-4, atol=2e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


def feature_maps(shape, dtype, device="cpu"):
    a = torch.randn(shape, dtype=torch.float64).relu()  # post-ReLU activations, as usual
    g = torch.randn(shape, dtype=torch.float64) * 1e-2
    return a.to(dtype).to(device), g.to(dtype).to(device)


def check(a, g, dtype, **kw):
    got = ops.gradcam(a, g, **kw)
    want = reference.gradcam(a.double(), g.double(), kw.get("variant", "gradcam"), kw.get("relu", True),
                             kw.get("output_size"), kw.get("normalize", True))
    assert got.dtype == a.dtype
    torch.testing.assert_close(got.double(), want, **TOL[dtype])
    return got


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("output_size", [None, (224, 224), (13, 31)])
@pytest.mark.parametrize("normalize", [True, False])
def test_gradcam_matches_reference(variant, dtype, output_size, normalize):
    a, g = feature_maps((3, 32, 7, 9), dtype)
    got = check(a, g, dtype, variant=variant, output_size=output_size, normalize=normalize)
    h, w = output_size or (7, 9)
    assert got.shape == (3, 1, h, w)
    if normalize:
        flat = got.float().flatten(1)
        assert torch.all((flat.amin(1) == 0) | (flat.amax(1) == 0))


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcam_without_relu_keeps_negative_values(variant):
    a, g = feature_maps((2, 8, 5, 5), torch.float64)
    got = check(a, -g.abs(), torch.float64, variant=variant, relu=False, normalize=False)
    if variant in ("layercam", "gradcam++"):  # these weight only positive gradients
        assert torch.equal(got, torch.zeros_like(got))
    else:
        assert (got < 0).any()


@pytest.mark.parametrize("variant", VARIANTS)
def test_edge_shapes(variant):
    for shape in [(1, 4, 6, 6), (3, 5, 1, 1), (2, 2048, 7, 7), (4, 1, 3, 8)]:
        a, g = feature_maps(shape, torch.float32)
        check(a, g, torch.float32, variant=variant, output_size=(16, 16))
        check(a, g, torch.float32, variant=variant)


@pytest.mark.parametrize("size", [(224, 224), (3, 50), (7, 9), (2, 2)])
def test_reference_resize_is_f_interpolate(size):
    x = torch.randn(2, 1, 7, 9, dtype=torch.float64)
    want = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(reference.resize_bilinear(x, size), want, rtol=1e-12, atol=1e-12)


def test_constant_map_is_zero_not_nan():
    a = torch.ones(2, 4, 5, 5)
    g = torch.full((2, 4, 5, 5), 0.1)
    for variant in VARIANTS:
        out = ops.gradcam(a, g, variant=variant, output_size=(20, 20))
        assert torch.equal(out, torch.zeros(2, 1, 20, 20))
    zero = ops.gradcam(a, torch.zeros_like(g))  # all-zero map
    assert torch.equal(zero, torch.zeros(2, 1, 5, 5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradcam_plus_plus_zero_denominators(dtype):
    # channel 0 sums to -2, so at g = 1 the alpha denominator 2 g^2 + sum_a g^3 is 0 (term
    # 0); g = 0.5 gives 0.5^3 / 0.25 = 0.5; g <= 0 gives 0. Channel 1 has no gradient.
    a = torch.tensor([[[[-1.0, -1.0], [0.0, 0.0]], [[3.0, 1.0], [2.0, 5.0]]]], dtype=dtype)
    g = torch.tensor([[[[1.0, 0.5], [0.0, -1.0]], [[0.0, 0.0], [0.0, 0.0]]]], dtype=dtype)
    got = check(a, g, dtype, variant="gradcam++", relu=False, normalize=False)
    assert torch.equal(got, (0.5 * a[:, :1]).to(dtype))


def test_non_contiguous_and_empty():
    a, g = feature_maps((4, 6, 9, 8), torch.float32)
    at, gt = a.transpose(2, 3), g.transpose(2, 3)
    assert not at.is_contiguous()
    check(at, gt, torch.float32, variant="gradcam++", output_size=(30, 30))
    cl = a.to(memory_format=torch.channels_last)
    check(cl, g, torch.float32, variant="xgradcam")
    e = torch.empty(0, 6, 9, 8)
    assert ops.gradcam(e, e, output_size=(5, 5)).shape == (0, 1, 5, 5)


@pytest.mark.parametrize("dtype", list(TOL))
def test_cam_matches_reference(dtype):
    f, _ = feature_maps((3, 16, 7, 7), dtype)
    w = torch.randn(10, 16, dtype=torch.float64).to(dtype)
    idx = torch.tensor([0, 9, 4])
    for kw in [dict(), dict(output_size=(224, 224)), dict(relu=False, normalize=False)]:
        got = ops.cam(f, w, idx, **kw)
        want = reference.cam(f.double(), w.double(), idx, kw.get("relu", True), kw.get("output_size"), kw.get("normalize", True))
        torch.testing.assert_close(got.double(), want, **TOL[dtype])


def test_opcheck():
    a, g = feature_maps((2, 4, 5, 6), torch.float32)
    opcheck(torch.ops.interp_ext.gradcam.default, (a, g, "gradcam++", True, [11, 12], True))
    opcheck(torch.ops.interp_ext.gradcam.default, (a, g, "layercam", False, None, False))
    opcheck(torch.ops.interp_ext.cam.default, (a, torch.randn(3, 4), torch.tensor([0, 2]), True, [8, 8], True))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ops.gradcam(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 5)), "activations and gradients must have the same shape"),
        (lambda: ops.gradcam(torch.rand(2, 3, 4), torch.rand(2, 3, 4)), r"activations must be 4-D \(N, K, h, w\)"),
        (lambda: ops.gradcam(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4).double()), "same dtype"),
        (lambda: ops.gradcam(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), variant="scorecam"), 'variant must be one of "gradcam"'),
        (lambda: ops.gradcam(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), output_size=(0, 4)), r"output_size must be two positive ints \(H, W\), got \[0, 4\]"),
        (lambda: ops.gradcam(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), output_size=(4,)), "output_size must be two positive ints"),
        (lambda: ops.gradcam(torch.ones(2, 3, 4, 4, dtype=torch.int32), torch.ones(2, 3, 4, 4, dtype=torch.int32)), "activations must be a floating"),
        (lambda: ops.gradcam(torch.rand(2, 3, 0, 4), torch.rand(2, 3, 0, 4)), "non-empty spatial size"),
        (lambda: ops.cam(torch.rand(2, 3, 4, 4), torch.rand(5, 4), torch.tensor([0, 1])), r"fc_weight must be \(num_classes, K\)"),
        (lambda: ops.cam(torch.rand(2, 3, 4, 4), torch.rand(5, 3), torch.tensor([0, 5])), r"class_idx must be in \[0, 5\)"),
        (lambda: ops.cam(torch.rand(2, 3, 4, 4), torch.rand(5, 3), torch.tensor([0])), "one class per sample"),
        (lambda: ops.cam(torch.rand(2, 3, 4, 4), torch.rand(5, 3), torch.tensor([0.0, 1.0])), "class_idx must be an int64"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


@pytest.mark.needs_cuda
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("shape, size", [((3, 32, 7, 9), (224, 224)), ((2, 2048, 7, 7), None), ((1, 8, 112, 112), (50, 60)), ((4, 3, 1, 1), (5, 5))])
def test_gradcam_cuda_equals_cpu(variant, dtype, shape, size):
    a, g = feature_maps(shape, dtype)
    cpu = ops.gradcam(a, g, variant=variant, output_size=size)
    cuda = ops.gradcam(a.cuda(), g.cuda(), variant=variant, output_size=size)
    assert cuda.is_cuda
    torch.testing.assert_close(cuda.cpu().double(), cpu.double(), **TOL[dtype])


@pytest.mark.needs_cuda
def test_cam_cuda_equals_cpu():
    f, _ = feature_maps((3, 16, 7, 7), torch.float32)
    w, idx = torch.randn(10, 16), torch.tensor([0, 9, 4])
    torch.testing.assert_close(ops.cam(f.cuda(), w.cuda(), idx.cuda(), output_size=(224, 224)).cpu(),
                               ops.cam(f, w, idx, output_size=(224, 224)))
    with pytest.raises(RuntimeError, match="class_idx must be in"):
        ops.cam(f.cuda(), w.cuda(), torch.tensor([0, 1, 10], device="cuda"))


@pytest.mark.parametrize("shape, size", [((1, 1, 8388610, 1), None), ((1, 1, 1, 8388610), None),
                                         ((1, 1, 8388610, 1), (8388612, 1))])
def test_resize_taps_stay_inside_long_maps(shape, size):
    # past 2^23 rows float rounding put the source row at h: one read past the map
    ones = torch.ones(shape)
    got = ops.gradcam(ones, ones, variant="hirescam", relu=False, normalize=False, output_size=size)
    assert got.min().item() == 1.0 and got.max().item() == 1.0
