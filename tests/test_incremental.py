"""Incremental occlusion: the box rule against a brute-force probe, and maps equal to full
re-inference on real architectures, awkward geometries and unplannable parts."""
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from interp_ext import incremental
from interp_ext.attr import Occlusion
from interp_ext.incremental.boxes import conv_changed


def _changed_span(before: torch.Tensor, after: torch.Tensor, axis: int) -> tuple[int, int]:
    """[lo, hi) of the rows (axis 2) or columns (axis 3) where any output changed."""
    moved = (before != after).any(dim=1).any(dim=0)  # (H, W)
    line = moved.any(dim=1 if axis == 2 else 0).nonzero().flatten()
    return (int(line.min()), int(line.max()) + 1) if line.numel() else (0, 0)


@pytest.mark.parametrize("trial", range(60))
def test_box_rule_against_a_probe(trial):
    g = torch.Generator().manual_seed(trial)

    def pick(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    k, s, d = pick(1, 5), pick(1, 4), pick(1, 3)
    p = pick(0, (k - 1) * d // 2 + 1) if trial % 3 else 0
    h = pick(max(8, (k - 1) * d + 1), 24)
    kind = ("conv", "grouped", "max", "avg")[trial % 4]
    x = torch.randn(1, 4, h, h, dtype=torch.float64, generator=g)
    if kind in ("conv", "grouped"):
        groups = 2 if kind == "grouped" else 1
        w = torch.randn(6, 4 // groups, k, k, dtype=torch.float64, generator=g)

        def op(t):
            return F.conv2d(t, w, None, s, p, d, groups)
    elif kind == "max":
        p = min(p, k // 2)

        def op(t):
            return F.max_pool2d(t, k, s, p, d)
    else:
        p = min(p, k // 2)

        def op(t):
            return F.avg_pool2d(t, k, s, p)
        d = 1
    lo = pick(0, h - 1)
    hi = pick(lo + 1, min(h, lo + 6))
    y = x.clone()
    y[:, :, lo:hi, lo:hi] += torch.rand(1, 4, hi - lo, hi - lo, dtype=torch.float64, generator=g) + 1.0
    before, after = op(x), op(y)
    out = before.shape[2]
    first, end = (int(v) for v in conv_changed(torch.tensor([lo]), torch.tensor([hi]), k, s, p, d, out))
    for axis in (2, 3):
        alo, ahi = _changed_span(before, after, axis)
        if ahi > alo:  # every changed output lies in the predicted interval
            assert first <= alo and ahi <= end, (kind, k, s, p, d, lo, hi, (alo, ahi), (first, end))
        if kind in ("conv", "grouped") and d == 1:  # dense kernels: the interval is exact
            assert (alo, ahi) == ((first, end) if end > first else (0, 0))


def _exact(model, x, window, stride, baselines=0.0, tol=1e-10, **kw):
    occ = Occlusion(model.double().eval())
    fast = occ.attribute(x, window, stride, baselines=baselines, incremental=True, **kw)
    full = occ.attribute(x, window, stride, baselines=baselines, incremental=False, **kw)
    err = (fast - full).abs().max().item()
    assert err <= tol * full.abs().max().item(), err
    return occ


class DenseStyle(nn.Module):
    """Channel concatenations of branches with different receptive fields (DenseNet)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 4, 3, padding=1)
        self.b = nn.Conv2d(12, 4, 5, padding=2)
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = torch.cat([x, F.relu(self.a(x))], 1)
        x = torch.cat((x, self.b(x)), dim=1)
        x = self.pool(x)
        return self.head(x.mean((2, 3)))


class SqueezeExcite(nn.Module):
    """Squeeze-excite gating: after the global mean every later value changes."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu6(self.bn(self.conv1(x)))
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        x = self.conv2(x * gate)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so it becomes a leaf."""

    def forward(self, x):
        return x * 2 if x.sum() > 0 else x - 1


class MidNetworkUnknown(nn.Module):
    """An op without a rule (roll reads elsewhere) and an untraceable submodule in the
    middle: the copies run in full from there, still exact."""

    def __init__(self, which):
        super().__init__()
        self.which = which
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.odd = Untraceable()
        self.c2 = nn.Conv2d(6, 6, 3, padding=(1, 2), dilation=(1, 2))
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.roll(x, 1, dims=3) if self.which == "roll" else self.odd(x)
        x = F.max_pool2d(self.c2(x), 3, 2, 1)
        return self.head(x.amax((2, 3)))


class Padded(nn.Module):
    """Asymmetric explicit padding (TensorFlow "same"), as the bundled model pads."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.c1 = nn.Conv2d(3, 8, 3, stride=2)
        self.c2 = nn.Conv2d(8, 8, 3, groups=8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.c1(self.pad(x)))
        x = self.c2(F.pad(x, (1, 2, 2, 1), value=0.5))
        return self.head(x.mean((2, 3)))


def test_resnet18_exact():
    _exact(torchvision.models.resnet18(num_classes=7), torch.randn(1, 3, 64, 64, dtype=torch.float64),
           (3, 12, 12), (3, 8, 8))


def test_vgg11_exact_batch_of_two():
    _exact(torchvision.models.vgg11(num_classes=5), torch.randn(2, 3, 48, 48, dtype=torch.float64), (3, 8, 8), (3, 8, 8))


@pytest.mark.parametrize("model", [DenseStyle, SqueezeExcite, Padded])
def test_small_architectures_exact(model):
    _exact(model(), torch.randn(2, 3, 23, 29, dtype=torch.float64), (3, 5, 7), (3, 3, 4))


def test_bundled_model_exact():
    from interp_ext import models

    model = models.load().model
    x = torch.rand(1, 3, 96, 96, dtype=torch.float64) * 2 - 1
    occ = _exact(model, x, (3, 16, 16), (3, 16, 16), target=0)
    plan, reason = occ.incremental_plan(x, (3, 16, 16), (3, 16, 16))
    assert plan is not None and plan.flop_ratio > 1.0, reason


@pytest.mark.parametrize("which", ["roll", "leaf"])
def test_unplanned_op_mid_network_falls_back_exactly(which):
    model = MidNetworkUnknown(which)
    x = torch.randn(1, 3, 20, 20, dtype=torch.float64)
    occ = _exact(model, x, (3, 4, 4), (3, 2, 2))
    plan, _ = occ.incremental_plan(x, (3, 4, 4), (3, 2, 2))
    assert "(no rule)" in plan.report()
    if which == "leaf":
        assert plan.graph.leaves == ("odd",)


def test_channel_windows_non_dividing_strides_and_per_sample_baselines():
    model = torchvision.models.resnet18(num_classes=4)
    x = torch.randn(2, 3, 37, 41, dtype=torch.float64)
    _exact(model, x, (1, 7, 5), (1, 3, 4), baselines=torch.randn(2, 3, 37, 41, dtype=torch.float64))
    _exact(model, x, (2, 6, 6), (1, 5, 5), baselines=torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64))


def test_refine_combines_with_incremental():
    model = torchvision.models.resnet18(num_classes=4)
    x = torch.randn(1, 3, 40, 40, dtype=torch.float64)
    _exact(model, x, (3, 8, 8), (3, 2, 2), refine=0.25)


def test_float32_within_the_issue_tolerance():
    model = torchvision.models.resnet18().eval()
    x = torch.rand(1, 3, 112, 112)
    occ = Occlusion(model)
    fast = occ.attribute(x, (3, 16, 16), (3, 16, 16), target=3, incremental=True)
    full = occ.attribute(x, (3, 16, 16), (3, 16, 16), target=3, incremental=False)
    assert (fast - full).abs().max() <= 1e-4 * full.abs().max()


def test_field_threshold_is_opt_in_and_approximate():
    model = torchvision.models.resnet18(num_classes=4).double().eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    occ = Occlusion(model)
    exact = occ.attribute(x, (3, 8, 8), (3, 8, 8), incremental=False)
    whole = occ.attribute(x, (3, 8, 8), (3, 8, 8), field_threshold=1.0)  # a cap at the map: exact
    assert torch.allclose(whole, exact, rtol=0, atol=1e-10 * exact.abs().max().item())
    capped = occ.attribute(x, (3, 8, 8), (3, 8, 8), field_threshold=0.3)
    assert not torch.allclose(capped, exact) and torch.isfinite(capped).all()
    # its quality on real photos (SSIM against the exact map) is in bench_occlusion.py --field-study
    plan_capped, _ = occ.incremental_plan(x, (3, 8, 8), (3, 8, 8), field_threshold=0.3)
    plan_exact, _ = occ.incremental_plan(x, (3, 8, 8), (3, 8, 8))
    assert plan_capped.flop_ratio > plan_exact.flop_ratio


def test_plan_flop_ratios_at_224():
    """The plans' multiply-add ratios match the limits the issue computed by hand."""
    x = torch.rand(1, 3, 224, 224)
    want = {"resnet18": (2.1, 2.3), "vgg11": (7.5, 9.0)}
    for name, (lo, hi) in want.items():
        model = getattr(torchvision.models, name)().eval()
        plan, reason = Occlusion(model).incremental_plan(x, (3, 16, 16), (3, 8, 8))
        assert plan is not None, reason
        assert lo < plan.flop_ratio < hi, (name, plan.flop_ratio)


class Aliased(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        a = self.c(x)
        b = torch.relu_(a)  # `a` is read again below, after it changed in place
        return self.head((a + b).mean((2, 3)))


def test_in_place_aliasing_is_refused_and_runs_in_full():
    x = torch.randn(1, 3, 12, 12)
    occ = Occlusion(Aliased())
    plan, reason = occ.incremental_plan(x, (3, 4, 4), (3, 2, 2))
    assert plan is None and "in place" in reason
    with pytest.raises(ValueError, match="incremental: this model cannot be planned: .*in place"):
        occ.attribute(x, (3, 4, 4), (3, 2, 2), incremental=True)
    default = occ.attribute(x, (3, 4, 4), (3, 2, 2))
    assert torch.allclose(default, occ.attribute(x, (3, 4, 4), (3, 2, 2), incremental=False))


def test_default_leaves_hooked_models_to_full_inference():
    model = torchvision.models.resnet18(num_classes=3).eval()
    seen = []
    handle = model.layer1.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    try:
        Occlusion(model).attribute(torch.randn(1, 3, 32, 32), (3, 8, 8), (3, 8, 8), perturbations_per_eval=4)
    finally:
        handle.remove()
    assert seen == [1] + [4] * 4  # the clean image, then every batch of whole copies


def test_bad_arguments():
    model = torchvision.models.resnet18(num_classes=3)
    x = torch.randn(1, 3, 32, 32)
    occ = Occlusion(model)
    with pytest.raises(ValueError, match="incremental must be True, False or None"):
        occ.attribute(x, (3, 8, 8), incremental="yes")
    for tau in (0, 1.5, True):
        with pytest.raises(ValueError, match="field_threshold must be a fraction"):
            occ.attribute(x, (3, 8, 8), field_threshold=tau)
    with pytest.raises(ValueError, match="field_threshold .* needs incremental"):
        occ.attribute(x, (3, 8, 8), field_threshold=0.5, incremental=False)
    with pytest.raises(ValueError, match="additional_forward_args are not planned"):
        occ.attribute(x, (3, 8, 8), incremental=True, additional_forward_args=(1,))


def test_plans_are_cached_per_model_and_geometry():
    model = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    a, _, _ = incremental.plan_for(model, x, (3, 8, 8), (3, 4, 4), None)
    b, _, _ = incremental.plan_for(model, x, (3, 8, 8), (3, 4, 4), None)
    c, _, _ = incremental.plan_for(model, x, (3, 8, 8), (3, 8, 8), None)
    assert a is b and a is not c
