"""Boundary cases of every native op, run against the AddressSanitizer + UBSan build of
the CPU kernels (`make sanitize`; tests/test_sanitizer.py runs this script).

    LD_PRELOAD=$(gcc -print-file-name=libasan.so) python tests/sanitizer_cases.py build-asan/libinterp_ext_ops.so

A fresh interpreter that loads the sanitized library instead of the interp_ext package
(the ops register once per process); reference.py is loaded by path for the values.
Any out-of-bounds access or undefined behaviour aborts with the sanitizer's report;
a wrong value or a missing error fails an assertion. Prints "ok: N cases".
"""
import importlib.util
import sys
from pathlib import Path

import torch

torch.ops.load_library(sys.argv[1])
_spec = importlib.util.spec_from_file_location("reference", Path(__file__).resolve().parents[1] / "interp_ext" / "reference.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)
op = torch.ops.interp_ext
torch.manual_seed(0)
torch.set_num_threads(2)  # the parallel paths too
cases = 0


def same(got, want, tol=0.0):
    global cases
    cases += 1
    if tol == 0:
        assert torch.equal(got, want), (got, want)
    else:
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def refused(fn, match):
    global cases
    cases += 1
    try:
        fn()
    except RuntimeError as e:
        assert match in str(e), f"expected {match!r} in: {e}"
    else:
        raise AssertionError(f"no error (expected {match!r})")


# ---- occlusion: windows at and beyond the border, stride > window, range arithmetic ----
geometries = [
    ((3, 8, 8), (3, 2, 2), (3, 5, 5)),  # the last windows start beyond the border
    ((1, 5, 5), (1, 1, 1), (1, 1, 3)),
    ((2, 1, 1), (1, 1, 1), (1, 1, 1)),  # 1x1 planes
    ((1, 7, 3), (1, 7, 3), (1, 9, 9)),  # window = image, stride > image
    ((4, 6, 9), (3, 4, 2), (2, 3, 7)),
    ((1, 64, 3), (1, 5, 3), (1, 4, 1)),  # more planes than the parallel grain
]
for shape, window, stride in geometries:
    total = 1
    for d, w, s in zip(shape, window, stride):
        total *= (d - w + s - 1) // s + 1
    for dtype in (torch.float32, torch.float64, torch.float16):
        x = torch.randn(2, *shape).to(dtype)
        for base in (torch.zeros(1, *shape, dtype=dtype), torch.randn(2, *shape).to(dtype)):
            same(op.occlusion_batch(x, base, window, stride, 0, total), ref.occlusion_batch(x, base, window, stride, 0, total))
            same(op.occlusion_batch(x, base, window, stride, total - 1, 1), ref.occlusion_batch(x, base, window, stride, total - 1, 1))
            same(op.occlusion_batch(x, base, window, stride, total, 0), x.new_empty((0, *shape)))
            ids = torch.randint(0, total, (3, 2))
            same(op.occlusion_batch_at(x, base, window, stride, ids), ref.occlusion_batch_at(x, base, window, stride, ids))
            buf = torch.empty((total * 2, *shape), dtype=dtype)
            op.occlusion_batch.out(x, base, window, stride, 0, total, out=buf)
            same(buf, ref.occlusion_batch(x, base, window, stride, 0, total))
    diffs = torch.randn(2, total, dtype=torch.float64)
    same(op.occlusion_accumulate(diffs, shape, window, stride), ref.occlusion_accumulate(diffs, shape, window, stride), 1e-10)
    x = torch.randn(1, *shape)
    refused(lambda: op.occlusion_batch(x, x, window, stride, total, 1), "out of range")
    refused(lambda: op.occlusion_batch(x, x, window, stride, 2**63 - 1, 1), "out of range")
    refused(lambda: op.occlusion_batch(x, x, window, stride, 1, 2**63 - 1), "out of range")
    refused(lambda: op.occlusion_batch(x, x, window, stride, -1, 1), "out of range")
    refused(lambda: op.occlusion_batch_at(x, x, window, stride, torch.tensor([[total]])), "window ids")
    refused(lambda: op.occlusion_batch_at(x, x, window, stride, torch.tensor([[-1]])), "window ids")
    refused(lambda: op.occlusion_accumulate(torch.randn(1, total + 1), shape, window, stride), "diffs must be")

x = torch.randn(1, 1, 5, 5)
refused(lambda: op.occlusion_batch(x, x, [1, 6, 1], [1, 1, 1], 0, 1), "window H")
refused(lambda: op.occlusion_batch(x, x, [1, 1, 1], [1, 0, 1], 0, 1), "stride H")
refused(lambda: op.occlusion_batch(x, x, [1, 1], [1, 1, 1], 0, 1), "window must have 3 values")
refused(lambda: op.occlusion_accumulate(torch.randn(1, 1), [1, 0, 5], [1, 1, 1], [1, 1, 1]), "must be positive")
# out= sharing memory with an input: copy 1 would be built from copy 0's data
buf = torch.randn(2, 1, 5, 5)
refused(lambda: op.occlusion_batch.out(buf[:1], torch.zeros(1, 1, 5, 5), [1, 2, 2], [1, 1, 1], 0, 2, out=buf), "share memory")
refused(lambda: op.occlusion_batch.out(x, buf[1:], [1, 2, 2], [1, 1, 1], 0, 2, out=buf), "share memory")
ids = torch.zeros(2, 1, 25, dtype=torch.int64)  # ids stored inside out's bytes
x64 = x.double()
refused(lambda: op.occlusion_batch_at.out(x64, x64, [1, 1, 1], [1, 1, 1], ids[0, 0, :2].view(2, 1),
                                          out=ids.view(torch.float64).view(2, 1, 5, 5)), "share memory")
# empty batch
e = torch.randn(0, 2, 3, 3)
same(op.occlusion_batch(e, torch.zeros(1, 2, 3, 3), [1, 2, 2], [1, 1, 1], 0, 4), e.new_empty((0, 2, 3, 3)))
same(op.occlusion_accumulate(torch.randn(0, 8), [2, 3, 3], [1, 2, 2], [1, 1, 1]), torch.empty(0, 2, 3, 3))

# ---- feature subsets ----
for shape, m_shape in (((2, 3, 4, 5), (1, 1, 4, 5)), ((2, 3, 4, 5), (2, 3, 4, 5)), ((1, 1, 1, 1), (1, 1, 1, 1)),
                       ((3, 2, 7, 1), (3, 1, 7, 1))):
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = torch.randn(*shape).to(dtype)
        base = torch.randn(1, *shape[1:]).to(dtype)
        mask = torch.randint(0, 4, m_shape)
        present = torch.rand(5, 4) > 0.5
        same(op.feature_batch(x, base, mask, present), ref.feature_batch(x, base, mask, present))
    refused(lambda: op.feature_batch(x, base, torch.full(m_shape, 4), torch.ones(2, 4, dtype=torch.bool)), "ids must be in")
    refused(lambda: op.feature_batch(x, base, torch.full(m_shape, -1), torch.ones(2, 4, dtype=torch.bool)), "ids must be in")
    refused(lambda: op.feature_batch(x, base, torch.zeros(m_shape, dtype=torch.int64), torch.ones(2, 0, dtype=torch.bool)), "ids must be in")
x = torch.randn(1, 1, 2, 2)
mask = torch.zeros(1, 1, 2, 2, dtype=torch.int64)
buf = torch.empty(2, 1, 2, 2)
refused(lambda: op.feature_batch.out(buf[:1], x, mask, torch.ones(2, 1, dtype=torch.bool), out=buf), "share memory")

# ---- guided rectifier and saliency: odd lengths (vector tails), empty, 1 element ----
for n in (0, 1, 7, 33, 1000):
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        g, x = torch.randn(n).to(dtype), torch.randn(n).mul(4).to(dtype)
        for upper in (None, 3.3, 0.1, 1e6):
            for rule in ("guided", "deconvnet"):
                same(op.guided_relu_backward(g, x, upper, rule), ref.guided_relu_backward(g, x, upper, rule))
        out = torch.empty(2 * n, dtype=dtype)[::2]
        op.guided_relu_backward.out(g, x, 6.0, "guided", out=out)
        same(out, ref.guided_relu_backward(g, x, 6.0))
for shape in ((0, 3, 4, 4), (1, 1, 1, 1), (2, 5, 3, 7), (1, 300, 33, 35), (3, 1, 1, 2049)):
    g = torch.randn(shape)
    same(op.saliency_reduce(g), ref.saliency_reduce(g))
refused(lambda: op.saliency_reduce(torch.randn(1, 0, 3, 3)), "at least one channel")

# ---- Grad-CAM / CAM: 1x1 maps, large and small output sizes, class ids at the ends ----
for (n, k, h, w), size in (((1, 1, 1, 1), None), ((2, 3, 1, 1), [5, 7]), ((2, 4, 7, 5), [1, 1]), ((1, 2, 3, 3), [300, 2]),
                           ((0, 4, 3, 3), [8, 8]), ((3, 33, 2, 9), [9, 2])):
    a, gr = torch.randn(n, k, h, w), torch.randn(n, k, h, w)
    for variant in ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"):
        same(op.gradcam(a, gr, variant, True, size, True), ref.gradcam(a, gr, variant, True, size, True), 1e-4)
    fc = torch.randn(6, k)
    idx = torch.tensor([5, 0, 3][:n], dtype=torch.int64)
    same(op.cam(a, fc, idx, True, size, False), ref.cam(a, fc, idx, True, size, False), 1e-4)
a = torch.randn(2, 3, 4, 4)
refused(lambda: op.cam(a, torch.randn(6, 3), torch.tensor([0, 6]), True, None, True), "class_idx must be in")
refused(lambda: op.cam(a, torch.randn(6, 3), torch.tensor([-1, 0]), True, None, True), "class_idx must be in")
refused(lambda: op.gradcam(a, a, "gradcam", True, [0, 4], True), "output_size")

# ---- separable filter: kernels wider than the image, 1-pixel axes, per-sample taps ----
for shape in ((1, 1, 1, 1), (2, 3, 1, 9), (1, 2, 5, 1), (2, 1, 4, 6), (1, 1, 17, 70)):
    for k in (1, 2, 3, 8, 21):
        for padding in ("reflect", "replicate", "zeros"):
            x = torch.randn(shape)
            th = torch.rand(1, k)
            tw = torch.rand(shape[0], k + 1)
            same(op.separable_filter(x, th, tw, padding), ref.separable_filter(x, th, tw, padding), 1e-5)
            out = torch.empty_like(x)
            op.separable_filter.out(x, th, tw, padding, out=out)
            same(out, ref.separable_filter(x, th, tw, padding), 1e-5)
            xd = x.double().requires_grad_()
            gr = torch.randn(shape, dtype=torch.float64)
            (want,) = torch.autograd.grad(ref.separable_filter(xd, th.double(), tw.double(), padding), xd, gr)
            same(op.separable_filter_backward(gr, th.double(), tw.double(), padding), want, 1e-10)
x = torch.randn(1, 1, 4, 4)
same(op.separable_filter(torch.randn(0, 2, 3, 3), torch.ones(1, 3), torch.ones(1, 3), "reflect"), torch.empty(0, 2, 3, 3))
refused(lambda: op.separable_filter(x, torch.ones(1, 0), torch.ones(1, 3), "reflect"), "k >= 1")
refused(lambda: op.separable_filter(x, torch.ones(3, 3), torch.ones(1, 3), "reflect"), "taps_h must be")

# ---- total variation and the regularisation step ----
for shape in ((1, 1, 1, 1), (2, 3, 1, 5), (1, 2, 6, 1), (2, 2, 9, 17), (0, 3, 4, 4)):
    x = torch.randn(shape, dtype=torch.float64)
    for beta in (2.0, 1.0, 3.5):
        same(op.total_variation(x, beta), ref.total_variation(x, beta), 1e-10)
        gr = torch.randn(shape[0], dtype=torch.float64)
        xd = x.clone().requires_grad_()
        (want,) = torch.autograd.grad(ref.total_variation(xd, beta), xd, gr) if x.numel() else (torch.zeros_like(x),)
        same(op.total_variation_backward(gr, x, beta), want, 1e-8)
for shape in ((1, 1, 1, 1), (2, 3, 1, 5), (1, 3, 7, 9), (3, 1, 64, 65), (0, 3, 4, 4)):
    for pct in ((0.0, 0.0, 0.0), (50.0, 30.0, 20.0), (99.9, 99.9, 99.9), (1e-9, 0.0, 99.0)):
        x, gr = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
        want = ref.regularize_step(x, gr, 0.5, 0.1, *pct)
        op.regularize_step_(x, gr, 0.5, 0.1, *pct)
        same(x, want, 1e-10)
x = torch.randn(1, 3, 4, 4)
refused(lambda: op.regularize_step_(x, x.clone(), 1.0, 0.0, 100.0, 0.0, 0.0), "grad_percentile")
refused(lambda: op.regularize_step_(x, x.clone(), 1.0, 1.0, 0.0, 0.0, 0.0), "decay")
refused(lambda: op.regularize_step_(x, x, 1.0, 0.0, 0.0, 0.0, 0.0), "must not share memory")

# ---- patch_splice: boxes and patches partly or wholly outside the map, empty sizes ----
for dtype in (torch.float32, torch.float64, torch.float16):
    for hw, size, psize in (((1, 1), (3, 3), (1, 1)), ((6, 9), (5, 4), (3, 7)), ((64, 3), (70, 5), (2, 1)),
                            ((5, 5), (0, 3), (2, 2)), ((5, 5), (2, 2), (0, 0))):
        src = torch.randn(3, 2, *hw).to(dtype)
        k = 9
        sample = torch.randint(0, 3, (k,))
        origin = torch.randint(-8, 12, (k, 2))
        origin[0] = torch.tensor([-(2**39), 2**39])  # far outside: all padding
        patch = torch.randn(k, 2, *psize).to(dtype)
        porigin = torch.randint(-6, 10, (k, 2))
        for pad in (0.0, float("-inf")):
            same(op.patch_splice(src, sample, origin, list(size), pad, patch, porigin),
                 ref.patch_splice(src, sample, origin, size, pad, patch, porigin))
            same(op.patch_splice(src, sample, origin, list(size), pad, None, None),
                 ref.patch_splice(src, sample, origin, size, pad))
        buf = torch.full((k, 2, *size), float("nan"), dtype=dtype)
        op.patch_splice.out(src, sample, origin, list(size), 1.0, patch, porigin, out=buf)
        same(buf, ref.patch_splice(src, sample, origin, size, 1.0, patch, porigin))
src = torch.randn(2, 2, 4, 4)
zero2 = torch.zeros(1, 2, dtype=torch.long)
refused(lambda: op.patch_splice(src, torch.tensor([2]), zero2, [2, 2], 0.0, None, None), "sample ids")
refused(lambda: op.patch_splice(src, torch.tensor([-1]), zero2, [2, 2], 0.0, None, None), "sample ids")
refused(lambda: op.patch_splice(src, torch.tensor([0]), zero2 + 2**41, [2, 2], 0.0, None, None), "within 2^40")
refused(lambda: op.patch_splice(src, torch.tensor([0]), zero2, [2, -1], 0.0, None, None), "size must be")
refused(lambda: op.patch_splice(src, torch.tensor([0]), zero2, [2, 2], 0.0, torch.randn(1, 3, 2, 2), zero2), "patch must be")

print(f"ok: {cases} cases")
