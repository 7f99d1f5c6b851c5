"""occlusion_batch and occlusion_accumulate against interp_ext.reference."""
import pytest
import torch
from torch.library import opcheck

from interp_ext import ops, reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (C, H, W), window, stride: windows that do not divide the image, stride > window,
# window = image, channel windows smaller than C
GEOMETRIES = [
    ((3, 10, 12), (3, 4, 5), (1, 3, 4)),
    ((3, 9, 9), (1, 2, 2), (1, 3, 4)),
    ((3, 8, 8), (3, 8, 8), (1, 1, 1)),
    ((4, 11, 7), (2, 3, 3), (2, 2, 2)),
    ((2, 5, 6), (1, 1, 1), (1, 1, 1)),
    ((3, 16, 16), (3, 6, 6), (3, 5, 5)),
    # stride > window: the last windows start beyond the border and occlude nothing (the
    # CPU kernel once copied a negative number of bytes here)
    ((3, 8, 8), (3, 2, 2), (3, 5, 5)),
    ((1, 5, 5), (1, 1, 1), (1, 1, 3)),
]


@pytest.mark.parametrize("shape, window, stride", GEOMETRIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_matches_reference(shape, window, stride, dtype):
    n = 2
    x = torch.randn(n, *shape).to(dtype)
    total = ops.occlusion_window_count(shape, window, stride)
    assert total == len(range(total))
    for baseline in (torch.zeros(1, *shape, dtype=dtype), torch.randn(1, shape[0], 1, 1).to(dtype).expand(1, *shape),
                     torch.randn(n, *shape).to(dtype)):
        for start, count in ((0, total), (total // 3, min(5, total - total // 3)), (total - 1, 1)):
            got = ops.occlusion_batch(x, baseline, window, stride, start, count)
            want = reference.occlusion_batch(x, baseline, window, stride, start, count)
            assert got.shape == (count * n, *shape)
            assert torch.equal(got, want)


@pytest.mark.parametrize("shape, window, stride", GEOMETRIES)
def test_accumulate_matches_reference(shape, window, stride):
    total = ops.occlusion_window_count(shape, window, stride)
    diffs = torch.randn(3, total, dtype=torch.float64)
    got = ops.occlusion_accumulate(diffs, shape, window, stride)
    want = reference.occlusion_accumulate(diffs, shape, window, stride)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)):
        got = ops.occlusion_accumulate(diffs.to(dtype), shape, window, stride)
        torch.testing.assert_close(got.double(), reference.occlusion_accumulate(diffs.to(dtype).double(), shape, window, stride), rtol=tol, atol=tol)


def test_stride_larger_than_window_leaves_zeros():
    shape, window, stride = (1, 6, 6), (1, 2, 2), (1, 4, 4)
    got = ops.occlusion_accumulate(torch.ones(1, 4), shape, window, stride)
    assert got[0, 0, 0, 0] == 1 and got[0, 0, 2, 2] == 0 and got[0, 0, 4, 5] == 1


@pytest.mark.needs_cuda
def test_each_element_written_even_into_poisoned_memory():
    # the CUDA caching allocator hands the freed, poisoned block to the op's output
    shape, window, stride = (3, 9, 10), (2, 3, 4), (1, 2, 3)
    total = ops.occlusion_window_count(shape, window, stride)
    x = torch.randn(2, *shape, device="cuda")
    poison = torch.full((total * 2, *shape), float("nan"), device="cuda")
    ptr = poison.data_ptr()
    del poison
    got = ops.occlusion_batch(x, torch.zeros(1, *shape, device="cuda"), window, stride, 0, total)
    assert got.data_ptr() == ptr and not torch.isnan(got).any()
    acc_poison = torch.full((2, *shape), float("nan"), device="cuda")
    del acc_poison
    assert not torch.isnan(ops.occlusion_accumulate(torch.randn(2, total, device="cuda"), shape, window, stride)).any()


def test_non_contiguous_and_empty():
    x = torch.randn(2, 10, 8, 3).permute(0, 3, 1, 2)  # channels-last storage
    b = torch.zeros(1, 3, 10, 8)
    torch.testing.assert_close(ops.occlusion_batch(x, b, (3, 2, 2), (1, 2, 2), 0, 4),
                               reference.occlusion_batch(x, b, (3, 2, 2), (1, 2, 2), 0, 4))
    assert ops.occlusion_batch(x, b, (3, 2, 2), (1, 2, 2), 3, 0).shape == (0, 3, 10, 8)
    assert ops.occlusion_accumulate(torch.empty(0, 20), (3, 10, 8), (3, 2, 2), (1, 2, 2)).shape == (0, 3, 10, 8)


def test_opcheck():
    x = torch.randn(2, 3, 6, 7)
    opcheck(torch.ops.interp_ext.occlusion_batch.default, (x, torch.zeros(1, 3, 6, 7), [3, 2, 3], [1, 2, 2], 1, 5))
    opcheck(torch.ops.interp_ext.occlusion_accumulate.default, (torch.randn(2, 9), [3, 6, 7], [3, 2, 3], [1, 2, 2]))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ops.occlusion_batch(torch.rand(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), (3, 9, 2), (1, 1, 1), 0, 1), r"window H = 9 must be in \[1, 8\]"),
        (lambda: ops.occlusion_batch(torch.rand(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), (3, 2, 2), (1, 0, 1), 0, 1), "stride H must be positive"),
        (lambda: ops.occlusion_batch(torch.rand(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), (3, 2, 2), (1, -2, 1), 0, 1), "stride H must be positive"),
        (lambda: ops.occlusion_batch(torch.rand(2, 3, 8, 8), torch.zeros(3, 3, 8, 8), (3, 2, 2), (1, 1, 1), 0, 1), r"baseline must be \(1 or N, C, H, W\)"),
        (lambda: ops.occlusion_batch(torch.rand(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), (3, 2, 2), (1, 2, 2), 10, 7), "out of range: there are 16"),
        (lambda: ops.occlusion_batch(torch.rand(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), (3, 2), (1, 2, 2), 0, 1), "window must have 3 values"),
        (lambda: ops.occlusion_batch(torch.rand(3, 8, 8), torch.zeros(1, 3, 8, 8), (3, 2, 2), (1, 2, 2), 0, 1), r"x must be \(N, C, H, W\)"),
        (lambda: ops.occlusion_accumulate(torch.rand(2, 15), (3, 8, 8), (3, 2, 2), (1, 2, 2)), r"diffs must be \(N, 16\)"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


@pytest.mark.parametrize("start, count", [(2**63 - 1, 1), (1, 2**63 - 1), (17, 0), (-1, 1), (0, -1)])
def test_window_range_cannot_overflow(start, count):
    # start + count overflowed int64 and passed the range check (an unoccluded copy)
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(RuntimeError, match="out of range: there are 16 windows"):
        ops.occlusion_batch(x, torch.zeros(1, 3, 8, 8), (3, 2, 2), (1, 2, 2), start, count)


def test_out_sharing_memory_with_an_input_is_refused():
    # copy 1 would be built from the data copy 0 had already written over x
    buf = torch.randn(2, 1, 5, 5)
    zeros = torch.zeros(1, 1, 5, 5)
    for call in (
        lambda: ops.occlusion_batch(buf[:1], zeros, (1, 2, 2), (1, 1, 1), 0, 2, out=buf),
        lambda: ops.occlusion_batch(zeros, buf[1:], (1, 2, 2), (1, 1, 1), 0, 2, out=buf),
        lambda: ops.occlusion_batch_at(buf[:1], zeros, (1, 2, 2), (1, 1, 1), torch.zeros(2, 1, dtype=torch.int64), out=buf),
        lambda: ops.feature_batch(buf[:1], zeros, torch.zeros(1, 1, 5, 5, dtype=torch.int64), torch.ones(2, 1, dtype=torch.bool), out=buf),
    ):
        with pytest.raises(RuntimeError, match="out must not share memory with the inputs"):
            call()
    # a non-overlapping slice of the same storage is fine
    big = torch.randn(3, 1, 5, 5)
    got = ops.occlusion_batch(big[:1], zeros, (1, 2, 2), (1, 1, 1), 0, 2, out=big[1:])
    torch.testing.assert_close(got, reference.occlusion_batch(big[:1], zeros, (1, 2, 2), (1, 1, 1), 0, 2))

@pytest.mark.needs_cuda
@pytest.mark.parametrize("shape, window, stride", GEOMETRIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_equals_cpu(shape, window, stride, dtype):
    x = torch.randn(2, *shape).to(dtype)
    b = torch.randn(2, *shape).to(dtype)
    total = ops.occlusion_window_count(shape, window, stride)
    assert torch.equal(ops.occlusion_batch(x.cuda(), b.cuda(), window, stride, 0, total).cpu(),
                       ops.occlusion_batch(x, b, window, stride, 0, total))
    diffs = torch.randn(2, total).to(dtype)
    torch.testing.assert_close(ops.occlusion_accumulate(diffs.cuda(), shape, window, stride).cpu(),
                               ops.occlusion_accumulate(diffs, shape, window, stride))


def test_batch_into_a_reused_buffer():
    shape, window, stride = (3, 9, 10), (2, 3, 4), (1, 2, 3)
    x, b = torch.randn(2, *shape), torch.randn(1, *shape)
    total = ops.occlusion_window_count(shape, window, stride)
    buf = torch.full((8 * 2, *shape), float("nan"))  # poisoned: every element must be written
    for start in range(0, total, 8):
        count = min(8, total - start)
        res = ops.occlusion_batch(x, b, window, stride, start, count, out=buf[: count * 2])
        assert res.data_ptr() == buf.data_ptr()
        assert torch.equal(res, reference.occlusion_batch(x, b, window, stride, start, count))
    with pytest.raises(RuntimeError, match=r"out must be \(count \* N, C, H, W\)"):
        ops.occlusion_batch(x, b, window, stride, 0, 8, out=buf[:3])
    with pytest.raises(RuntimeError, match="out must be contiguous"):
        ops.occlusion_batch(x, b, window, stride, 0, 1, out=torch.empty(2, 10, 9, 3).permute(0, 3, 2, 1))
    opcheck(torch.ops.interp_ext.occlusion_batch.out, (x, b, list(window), list(stride), 0, 2), {"out": torch.empty(4, *shape)})


# ---- per-image window lists (coarse-to-fine occlusion) ----------------------------------


@pytest.mark.parametrize("shape, window, stride", GEOMETRIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_batch_at_matches_reference(shape, window, stride, dtype):
    n = 3
    x = torch.randn(n, *shape).to(dtype)
    total = ops.occlusion_window_count(shape, window, stride)
    windows = torch.randint(0, total, (4, n))
    for baseline in (torch.zeros(1, *shape, dtype=dtype), torch.randn(n, *shape).to(dtype)):
        got = ops.occlusion_batch_at(x, baseline, window, stride, windows)
        assert torch.equal(got, reference.occlusion_batch_at(x, baseline, window, stride, windows))


def test_batch_at_with_a_shared_list_equals_the_range_form():
    shape, window, stride = (3, 9, 10), (2, 3, 4), (1, 2, 3)
    x, b = torch.randn(2, *shape), torch.randn(1, *shape)
    total = ops.occlusion_window_count(shape, window, stride)
    windows = torch.arange(total).view(-1, 1).expand(total, 2)
    buf = torch.full((total * 2, *shape), float("nan"))
    got = ops.occlusion_batch_at(x, b, window, stride, windows, out=buf)
    assert got.data_ptr() == buf.data_ptr()
    assert torch.equal(got, ops.occlusion_batch(x, b, window, stride, 0, total))
    assert ops.occlusion_batch_at(x, b, window, stride, windows[:0]).shape == (0, *shape)
    opcheck(torch.ops.interp_ext.occlusion_batch_at.default, (x, b, list(window), list(stride), windows[:3].contiguous()))
    opcheck(torch.ops.interp_ext.occlusion_batch_at.out, (x, b, list(window), list(stride), windows[:2].contiguous()),
            {"out": torch.empty(4, *shape)})


@pytest.mark.parametrize(
    "windows, match",
    [
        (torch.tensor([[0, 16]]), r"window ids must be in \[0, 16\), got ids from 0 to 16"),
        (torch.tensor([[-1, 3]]), r"window ids must be in \[0, 16\)"),
        (torch.tensor([[0, 1, 2]]), r"windows must be an int64 \(count, N\) tensor with N = 2"),
        (torch.tensor([[0.0, 1.0]]), r"windows must be an int64"),
    ],
)
def test_batch_at_bad_windows(windows, match):
    with pytest.raises(RuntimeError, match=match):
        ops.occlusion_batch_at(torch.rand(2, 3, 8, 8), torch.zeros(1, 3, 8, 8), (3, 2, 2), (1, 2, 2), windows)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_at_cuda_equals_cpu(dtype):
    shape, window, stride = (3, 11, 13), (2, 4, 5), (1, 3, 4)
    x, b = torch.randn(2, *shape).to(dtype), torch.randn(2, *shape).to(dtype)
    windows = torch.randint(0, ops.occlusion_window_count(shape, window, stride), (5, 2))
    want = ops.occlusion_batch_at(x, b, window, stride, windows)
    out = torch.full_like(want, float("nan"), device="cuda")
    ops.occlusion_batch_at(x.cuda(), b.cuda(), window, stride, windows.cuda(), out=out)
    assert torch.equal(out.cpu(), want)
