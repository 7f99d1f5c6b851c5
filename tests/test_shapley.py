"""feature_batch (the op) and ShapleySampling (the method): reference, Captum, exact
Shapley values, efficiency, argument errors."""
import itertools
import math

import pytest
import torch
from torch import nn
from torch.library import opcheck

from interp_ext import ShapleySampling, grid_feature_mask, ops, reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _case(n=2, c=3, h=5, w=7, features=4, copies=3, mask_shape=(1, 1), per_sample_baseline=False, dtype=torch.float32):
    x = torch.randn(n, c, h, w).to(dtype)
    base = torch.randn(n if per_sample_baseline else 1, c, h, w).to(dtype)
    mask = torch.randint(0, features, (mask_shape[0], mask_shape[1], h, w))
    present = torch.rand(copies, features) > 0.5
    return x, base, mask, present


# ---- the op ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_shape", [(1, 1), (2, 1), (1, 3), (2, 3)])
@pytest.mark.parametrize("per_sample_baseline", [False, True])
def test_op_matches_reference(dtype, mask_shape, per_sample_baseline):
    x, base, mask, present = _case(mask_shape=mask_shape, per_sample_baseline=per_sample_baseline, dtype=dtype)
    got = ops.feature_batch(x, base, mask, present)
    assert got.shape == (3 * 2, 3, 5, 7)
    assert torch.equal(got, reference.feature_batch(x, base, mask, present))


def test_op_all_and_none_present():
    x, base, mask, _ = _case()
    out = ops.feature_batch(x, base, mask, torch.tensor([[True] * 4, [False] * 4]))
    assert torch.equal(out[:2], x) and torch.equal(out[2:], base.expand_as(x))


def test_op_writes_every_element_of_a_poisoned_buffer():
    x, base, mask, present = _case()
    out = torch.full((6, 3, 5, 7), float("nan"))
    ops.feature_batch(x, base, mask, present, out=out)
    assert torch.equal(out, reference.feature_batch(x, base, mask, present))


def test_op_non_contiguous_and_empty():
    x, base, mask, present = _case()
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)
    assert torch.equal(ops.feature_batch(xt, base, mask, present), reference.feature_batch(x, base, mask, present))
    assert ops.feature_batch(x, base, mask, present[:0]).shape == (0, 3, 5, 7)


def test_op_opcheck():
    x, base, mask, present = _case()
    opcheck(torch.ops.interp_ext.feature_batch.default, (x, base, mask, present))
    out = torch.empty(6, 3, 5, 7)
    opcheck(torch.ops.interp_ext.feature_batch.out, (x, base, mask, present), {"out": out})


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: {**a, "feature_mask": a["feature_mask"] + 1}, r"ids must be in \[0, F\) = \[0, 4\)"),
        (lambda a: {**a, "feature_mask": a["feature_mask"].int()}, "feature_mask must be an int64"),
        (lambda a: {**a, "feature_mask": a["feature_mask"][:, :, :4]}, r"feature_mask must be \(1 or N, 1 or C, H, W\)"),
        (lambda a: {**a, "present": a["present"].float()}, "present must be a bool"),
        (lambda a: {**a, "baseline": a["baseline"].double()}, "baseline must have x's dtype"),
        (lambda a: {**a, "x": a["x"].int()}, "x must be a floating-point"),
    ],
)
def test_op_bad_inputs(change, match):
    x, base, mask, present = _case()
    args = change({"x": x, "baseline": base, "feature_mask": mask, "present": present})
    with pytest.raises(RuntimeError, match=match):
        ops.feature_batch(args["x"], args["baseline"], args["feature_mask"], args["present"])


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_op_cuda_equals_cpu(dtype):
    x, base, mask, present = _case(mask_shape=(2, 3), per_sample_baseline=True, dtype=dtype)
    want = ops.feature_batch(x, base, mask, present)
    out = torch.full_like(want, float("nan"), device="cuda")
    ops.feature_batch(x.cuda(), base.cuda(), mask.cuda(), present.cuda(), out=out)
    assert torch.equal(out.cpu(), want)
    assert torch.equal(ops.feature_batch(x.cuda(), base.cuda(), mask.cuda(), present.cuda()).cpu(), want)


# ---- the method ---------------------------------------------------------------------------


class FourFeatures(nn.Module):
    """A model whose score depends on four pixel values through interactions, so that
    Shapley values differ from the plain marginal effects."""

    def forward(self, x):
        a, b, c, d = x[:, 0, 0, 0], x[:, 0, 0, 1], x[:, 0, 1, 0], x[:, 0, 1, 1]
        score = 2 * a + a * b * 3 - c * d + torch.sin(a + d) + b * c * d
        return torch.stack([score, -score], dim=1)


def exact_shapley(f, x, baseline, features=4):
    """Shapley values by the subset formula: sum over S not containing i of
    |S|! (F - |S| - 1)! / F! * (f(S + i) - f(S))."""
    def value(subset):
        keep = torch.zeros(4, dtype=torch.bool)
        keep[list(subset)] = True
        z = torch.where(keep.view(1, 1, 2, 2), x, baseline)
        return f(z)[:, 0].double()

    phi = torch.zeros(x.shape[0], features, dtype=torch.float64)
    for i in range(features):
        others = [j for j in range(features) if j != i]
        for size in range(features):
            for subset in itertools.combinations(others, size):
                weight = math.factorial(size) * math.factorial(features - size - 1) / math.factorial(features)
                phi[:, i] += weight * (value(subset + (i,)) - value(subset))
    return phi


def test_all_permutations_give_exact_shapley_values():
    model = FourFeatures()
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    baseline = torch.randn(1, 1, 2, 2, dtype=torch.float64)
    mask = torch.arange(4).view(2, 2)
    got = ShapleySampling(model).attribute(x, mask, baselines=baseline, target=0, permutations="all", return_features=True)
    torch.testing.assert_close(got, exact_shapley(model, x, baseline), rtol=1e-12, atol=1e-12)
    # input-shaped: every element carries its feature's value
    shaped = ShapleySampling(model).attribute(x, mask, baselines=baseline, target=0, permutations="all")
    torch.testing.assert_close(shaped.view(3, 4), got)


@pytest.mark.parametrize("permutations", [None, torch.tensor([[3, 1, 0, 2], [0, 1, 2, 3]])])
def test_efficiency_holds_for_every_permutation_set(permutations):
    model = FourFeatures()
    x = torch.randn(5, 1, 2, 2, dtype=torch.float64)
    mask = torch.arange(4).view(2, 2)
    phi = ShapleySampling(model).attribute(x, mask, n_samples=3, baselines=0.25, target=0, permutations=permutations,
                                           seed=7, return_features=True)
    gap = model(x)[:, 0] - model(torch.full_like(x, 0.25))[:, 0]
    torch.testing.assert_close(phi.sum(1), gap, rtol=1e-12, atol=1e-12)


def test_efficiency_on_a_cnn_with_a_patch_grid():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5))
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    model = model.double().eval()
    mask = grid_feature_mask(12, 12, 5)  # 3 x 3 patches, the last row and column clipped
    assert mask.max() == 8 and mask[11, 11] == 8 and mask[4, 5] == 1
    phi = ShapleySampling(model).attribute(x, mask, n_samples=4, target=[1, 4], seed=0, return_features=True,
                                           perturbations_per_eval=5)
    with torch.no_grad():
        gap = model(x)[[0, 1], [1, 4]] - model(torch.zeros_like(x))[[0, 1], [1, 4]]
    torch.testing.assert_close(phi.sum(1), gap, rtol=1e-10, atol=1e-12)


def test_seed_reproducible_and_independent_of_perturbations_per_eval():
    model = FourFeatures()
    x = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    mask = torch.arange(4).view(2, 2)
    sampler = ShapleySampling(model)
    a = sampler.attribute(x, mask, n_samples=5, seed=11, perturbations_per_eval=1)
    b = sampler.attribute(x, mask, n_samples=5, seed=11, perturbations_per_eval=100)
    c = sampler.attribute(x, mask, n_samples=5, seed=12)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert not torch.equal(a, c)


@pytest.fixture(scope="module")
def resnet():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


@pytest.mark.parametrize(
    "mask_kind, baselines, target, ppe",
    [("grid", 0.0, [1, 7], 16), ("per-sample", "image", 3, 5), ("channels", 0.5, None, 64)],
)
def test_equals_captum_shapley_value_sampling(resnet, mask_kind, baselines, target, ppe):
    captum = pytest.importorskip("captum.attr")
    x = torch.randn(2, 3, 32, 32)
    if mask_kind == "grid":
        ours_mask = grid_feature_mask(32, 32, 8)
        theirs_mask = ours_mask[None, None]
    elif mask_kind == "per-sample":  # same number of features, different layouts
        ours_mask = theirs_mask = torch.stack([grid_feature_mask(32, 32, 16), grid_feature_mask(32, 32, 16).t()])[:, None]
    else:  # channel x quadrant features
        ours_mask = theirs_mask = (torch.arange(3).view(1, 3, 1, 1) * 4 + grid_feature_mask(32, 32, 16)).expand(1, 3, 32, 32)
    b = torch.randn(2, 3, 32, 32) if baselines == "image" else baselines
    theirs_target = resnet(x).argmax(1) if target is None else target
    torch.manual_seed(5)
    ours = ShapleySampling(resnet).attribute(x, ours_mask, n_samples=3, baselines=b, target=target, perturbations_per_eval=ppe)
    torch.manual_seed(5)
    theirs = captum.ShapleyValueSampling(resnet).attribute(
        x, baselines=b, target=theirs_target, feature_mask=theirs_mask, n_samples=3, perturbations_per_eval=ppe)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_all_equals_captum_shapley_values(resnet):
    captum = pytest.importorskip("captum.attr")
    x = torch.randn(1, 3, 32, 32)
    mask = grid_feature_mask(32, 32, 16)
    ours = ShapleySampling(resnet).attribute(x, mask, target=2, permutations="all")
    theirs = captum.ShapleyValues(resnet).attribute(x, target=2, feature_mask=mask[None, None], perturbations_per_eval=8)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_memory_bounded_by_perturbations_per_eval():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(x.shape[0])
            return x.flatten(1)[:, :3]

    x = torch.randn(2, 3, 6, 6)
    ShapleySampling(Spy()).attribute(x, grid_feature_mask(6, 6, 2), n_samples=10, perturbations_per_eval=4)
    assert max(seen) == 4 * 2 and len(seen) == 2 + math.ceil(10 * 8 / 4)


class Forbidden(nn.Module):
    def forward(self, x):
        raise AssertionError("the model must not run on bad arguments")


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"feature_mask": torch.zeros(5, 6, dtype=torch.long)}, ValueError, r"feature_mask must be \(H, W\)"),
        ({"feature_mask": torch.zeros(6, 6)}, TypeError, "feature_mask must be an integer tensor"),
        ({"feature_mask": -torch.ones(6, 6, dtype=torch.long)}, ValueError, "non-negative"),
        ({"n_samples": 0}, ValueError, "n_samples must be a positive int"),
        ({"permutations": "some"}, ValueError, 'permutations must be None, "all"'),
        ({"permutations": torch.tensor([[0, 1, 2, 2] + list(range(4, 9))])}, ValueError, "must be a permutation"),
        ({"permutations": torch.tensor([[0, 1]])}, ValueError, r"permutations must be \(S, F\) with F = 9"),
        ({"permutations": "all"}, ValueError, "F = 9 > 8 is too many"),
        ({"perturbations_per_eval": 0}, ValueError, "perturbations_per_eval must be a positive int"),
        ({"baselines": torch.zeros(2, 6, 6)}, ValueError, "baselines must be"),
        ({"target": [1]}, ValueError, "one int class per sample"),
    ],
)
def test_bad_arguments_before_the_model_runs(kwargs, exc, match):
    args = {"feature_mask": grid_feature_mask(6, 6, 2), **kwargs}
    with pytest.raises(exc, match=match):
        ShapleySampling(Forbidden()).attribute(torch.randn(2, 3, 6, 6), **args)


def test_target_out_of_range_is_a_clear_error():
    with pytest.raises(ValueError, match=r"target must be in \[0, 3\)"):
        ShapleySampling(lambda x: x.flatten(1)[:, :3]).attribute(torch.randn(1, 3, 4, 4), grid_feature_mask(4, 4, 2), target=5)
