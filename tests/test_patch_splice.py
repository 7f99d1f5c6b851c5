"""patch_splice (incremental occlusion's read boxes) against interp_ext.reference."""
import pytest
import torch
from torch.library import opcheck

from interp_ext import ops, reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _case(dtype, k=40, n=3, c=4, hw=(9, 11), size=(7, 6), patch=(5, 3), spread=8):
    src = torch.randn(n, c, *hw).to(dtype)
    sample = torch.randint(0, n, (k,))
    origin = torch.randint(-spread, max(hw) + 2, (k, 2))
    p = torch.randn(k, c, *patch).to(dtype)
    porigin = torch.randint(-spread // 2, max(hw) + 1, (k, 2))
    return src, sample, origin, size, p, porigin


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pad_value", [0.0, float("-inf"), 2.5])
def test_matches_reference(dtype, pad_value):
    src, sample, origin, size, patch, porigin = _case(dtype)
    got = ops.patch_splice(src, sample, origin, size, pad_value, patch, porigin)
    assert got.shape == (40, 4, *size)
    assert torch.equal(got, reference.patch_splice(src, sample, origin, size, pad_value, patch, porigin))
    plain = ops.patch_splice(src, sample, origin, size, pad_value)
    assert torch.equal(plain, reference.patch_splice(src, sample, origin, size, pad_value))


@pytest.mark.parametrize(
    "hw, size, patch",
    [((1, 1), (3, 3), (1, 1)), ((5, 5), (5, 5), (5, 5)), ((6, 4), (1, 9), (2, 7)), ((8, 8), (0, 4), (3, 3)),
     ((8, 8), (4, 4), (0, 3)), ((3, 17), (9, 2), (4, 17))],
)
def test_geometries(hw, size, patch):
    """Boxes larger than the map, empty boxes and patches, patches wider than the box."""
    src, sample, origin, size, p, porigin = _case(torch.float64, hw=hw, size=size, patch=patch)
    got = ops.patch_splice(src, sample, origin, size, -1.0, p, porigin)
    assert torch.equal(got, reference.patch_splice(src, sample, origin, size, -1.0, p, porigin))


def test_every_element_written_once_into_a_poisoned_out():
    src, sample, origin, size, patch, porigin = _case(torch.float32)
    want = reference.patch_splice(src, sample, origin, size, 0.0, patch, porigin)
    out = torch.full((40, 4, *size), float("nan"))
    ops.patch_splice(src, sample, origin, size, 0.0, patch, porigin, out=out)
    assert torch.equal(out, want)
    strided = torch.full((40, 4, size[1], size[0]), float("nan")).transpose(2, 3)  # not contiguous
    ops.patch_splice(src, sample, origin, size, 0.0, patch, porigin, out=strided)
    assert torch.equal(strided, want)


def test_empty_batch_and_non_contiguous_inputs():
    src = torch.randn(2, 3, 10, 8).transpose(2, 3)  # (2, 3, 8, 10), not contiguous
    sample = torch.tensor([1, 0, 1])
    origin = torch.tensor([[-2, 3], [5, -1], [0, 0]])
    patch = torch.randn(3, 3, 6, 4).transpose(2, 3)
    porigin = torch.tensor([[0, 0], [4, 2], [-1, 7]])
    got = ops.patch_splice(src, sample, origin, (4, 5), 0.0, patch, porigin)
    assert torch.equal(got, reference.patch_splice(src, sample, origin, (4, 5), 0.0, patch, porigin))
    empty = ops.patch_splice(src, sample[:0], origin[:0], (4, 5))
    assert empty.shape == (0, 3, 4, 5)


def test_opcheck():
    src, sample, origin, size, patch, porigin = _case(torch.float32, k=6)
    opcheck(torch.ops.interp_ext.patch_splice.default, (src, sample, origin, list(size), 0.0, patch, porigin))
    opcheck(torch.ops.interp_ext.patch_splice.default, (src, sample, origin, list(size), 1.0, None, None))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(src=a["src"].long()), "src must be a floating-point tensor"),
        (lambda a: a.update(src=a["src"][0]), r"src must be \(N, C, H, W\)"),
        (lambda a: a.update(sample=a["sample"] + 3), r"sample ids must be in \[0, 3\)"),
        (lambda a: a.update(sample=a["sample"].int()), "sample must be an int64"),
        (lambda a: a.update(origin=a["origin"][:, :1]), r"origin must be an int64 \(K, 2\)"),
        (lambda a: a.update(origin=a["origin"] + 2**41), "origin must lie within 2"),
        (lambda a: a.update(size=[3, -1]), "size must be two non-negative ints"),
        (lambda a: a.update(patch=a["patch"][:, :2]), r"patch must be \(K, C, ph, pw\)"),
        (lambda a: a.update(patch=a["patch"].double()), "patch must have src's dtype"),
        (lambda a: a.update(patch_origin=None), "patch and patch_origin must be given together"),
        (lambda a: a.update(patch_origin=a["patch_origin"][:3]), r"patch_origin must be an int64 \(K, 2\)"),
    ],
)
def test_bad_arguments_are_named(change, message):
    src, sample, origin, size, patch, porigin = _case(torch.float32, k=5)
    args = dict(src=src, sample=sample, origin=origin, size=list(size), pad_value=0.0, patch=patch, patch_origin=porigin)
    change(args)
    with pytest.raises(RuntimeError, match=message):
        ops.patch_splice(**args)


def test_out_must_fit_and_not_overlap():
    src, sample, origin, size, patch, porigin = _case(torch.float32, k=5)
    with pytest.raises(RuntimeError, match=r"out must be \(K, C, h, w\)"):
        ops.patch_splice(src, sample, origin, size, 0.0, patch, porigin, out=torch.empty(5, 4, 1, 1))
    alias = torch.randn(5, 4, *size)
    with pytest.raises(RuntimeError, match="unsupported operation|overlap"):
        ops.patch_splice(alias[:3], sample % 3, origin, size, 0.0, None, None, out=alias)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu(dtype):
    src, sample, origin, size, patch, porigin = _case(dtype, k=300, hw=(23, 31), size=(13, 9), patch=(6, 6))
    want = ops.patch_splice(src, sample, origin, size, float("-inf"), patch, porigin)
    cuda = [t.cuda() for t in (src, sample, origin, patch, porigin)]
    got = ops.patch_splice(cuda[0], cuda[1], cuda[2], size, float("-inf"), cuda[3], cuda[4])
    assert torch.equal(got.cpu(), want)
    out = torch.full((300, 4, *size), float("nan"), dtype=dtype, device="cuda")
    ops.patch_splice(cuda[0], cuda[1], cuda[2], size, float("-inf"), cuda[3], cuda[4], out=out)
    assert torch.equal(out.cpu(), want)
