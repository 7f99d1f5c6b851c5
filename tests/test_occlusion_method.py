"""Occlusion against Captum's Occlusion, bounded memory, argument errors."""
import pytest
import torch
from torch import nn

from interp_ext import Occlusion


@pytest.fixture(scope="module")
def resnet():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.mark.parametrize(
    "window, stride, baselines, target, ppe",
    [
        ((3, 8, 8), (3, 4, 4), 0.0, [1, 7], 16),
        ((3, 6, 6), (3, 5, 5), 0.5, 3, 64),
        ((1, 8, 8), (1, 8, 8), "per-channel", None, 5),
        ((3, 10, 12), (3, 7, 9), "image", torch.tensor([2, 9]), 3),
    ],
)
def test_equals_captum_on_resnet18(resnet, window, stride, baselines, target, ppe):
    captum = pytest.importorskip("captum.attr")
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    if baselines == "per-channel":
        ours_b, theirs_b = torch.tensor([0.1, -0.2, 0.3]), torch.tensor([0.1, -0.2, 0.3]).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    elif baselines == "image":
        ours_b = theirs_b = torch.randn(2, 3, 32, 32)
    else:
        ours_b = theirs_b = baselines
    theirs_target = resnet(x).argmax(1) if target is None else target
    ours = Occlusion(resnet).attribute(x, window, stride, ours_b, target, perturbations_per_eval=ppe)
    theirs = captum.Occlusion(resnet).attribute(x, sliding_window_shapes=window, strides=stride, baselines=theirs_b,
                                                target=theirs_target, perturbations_per_eval=ppe)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.sizes = []
        self.fc = nn.Linear(3 * 12 * 12, 4)

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.fc(x.flatten(1))


def test_memory_bounded_by_perturbations_per_eval():
    model = Counting()
    x = torch.randn(3, 3, 12, 12)
    Occlusion(model).attribute(x, (3, 2, 2), (1, 1, 1), perturbations_per_eval=7)  # 121 windows
    assert max(model.sizes[1:]) == 7 * 3 and sum(model.sizes[1:]) == 121 * 3


def test_linear_model_attribution_is_exact():
    """For f(x) = w . x and a 1x1 window, occlusion to 0 gives exactly w * x."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 5 * 4, 3, bias=False))
    x = torch.randn(2, 2, 5, 4, dtype=torch.float64)
    model = model.double()
    got = Occlusion(model).attribute(x, (1, 1, 1), target=[0, 2])
    w = model[1].weight.detach().view(3, 2, 5, 4)
    torch.testing.assert_close(got, torch.stack([w[0] * x[0], w[2] * x[1]]))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(sliding_window_shapes=(3, 13, 2)), ValueError, r"H extent 13 must be in \[1, 12\]"),
        (dict(sliding_window_shapes=(3, 2, 2), strides=0), ValueError, "strides must be positive"),
        (dict(sliding_window_shapes=(3, 2, 2), strides=(1, -1, 1)), ValueError, "strides must be positive"),
        # windows would start beyond the border (once memory corruption in the CPU kernel)
        (dict(sliding_window_shapes=(3, 2, 2), strides=(3, 5, 5)), ValueError, "H stride 5 must not exceed the window's H extent 2"),
        (dict(sliding_window_shapes=(2, 2), strides=(1, 3)), ValueError, "W stride 3 must not exceed"),
        (dict(sliding_window_shapes=(3, 2, 2), baselines=torch.zeros(5)), ValueError, r"baselines must be a number, \(C,\)"),
        (dict(sliding_window_shapes=(3, 2, 2), target=[0, 9, 1]), ValueError, r"target must be in \[0, 4\)"),
        (dict(sliding_window_shapes=(3, 2, 2), perturbations_per_eval=0), ValueError, "perturbations_per_eval"),
        (dict(sliding_window_shapes=(3, 2, 2, 2)), ValueError, "sliding_window_shapes must be"),
    ],
)
def test_bad_arguments_before_the_model_runs(kwargs, exc, match):
    model = Counting()
    with pytest.raises(exc, match=match):
        Occlusion(model).attribute(torch.randn(3, 3, 12, 12), **kwargs)
    # range of target can only be checked on the clean output: nothing else ran
    assert len(model.sizes) <= 1


# ---- coarse-to-fine ------------------------------------------------------------------------


def test_refine_everything_equals_the_exact_map():
    model = Counting()
    x = torch.randn(2, 3, 12, 12)
    exact = Occlusion(model).attribute(x, (3, 4, 4), (3, 2, 2), target=1)
    refined = Occlusion(model).attribute(x, (3, 4, 4), (3, 2, 2), target=1, refine=1.0)
    torch.testing.assert_close(refined, exact, rtol=1e-5, atol=1e-6)


def test_refine_evaluates_coarse_windows_then_the_chosen_fraction():
    model = Counting()
    x = torch.randn(2, 3, 12, 12)
    Occlusion(model).attribute(x, (3, 4, 4), (3, 2, 2), refine=0.25, perturbations_per_eval=1000)
    # 1 clean call, 9 coarse windows (stride 4), ceil(0.25 * 25) = 7 fine windows
    assert model.sizes == [2, 9 * 2, 7 * 2]


def test_refine_is_exact_where_the_effect_is():
    """A model that only looks at one corner: refining 30% of the windows puts the exact
    map's values there, and the refined map is much closer to the exact one than the
    coarse estimate alone."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2, bias=False)).double()
    with torch.no_grad():
        w = model[1].weight.view(2, 3, 16, 16)
        w.zero_()
        w[:, :, 2:7, 3:9] = torch.randn(2, 3, 5, 6, dtype=torch.float64) ** 2 + 0.5
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64) + 0.5
    occ = Occlusion(model)
    exact = occ.attribute(x, (3, 4, 4), (3, 2, 2), target=0)
    refined = occ.attribute(x, (3, 4, 4), (3, 2, 2), target=0, refine=0.3)
    coarse_only = occ.attribute(x, (3, 4, 4), (3, 2, 2), target=0, refine=1e-9)  # one window refined
    torch.testing.assert_close(refined[:, :, 3:6, 4:8], exact[:, :, 3:6, 4:8], rtol=1e-10, atol=1e-10)
    more = occ.attribute(x, (3, 4, 4), (3, 2, 2), target=0, refine=0.45)
    err = lambda m: (m - exact).abs().mean().item()
    assert err(more) < err(refined) < 0.3 * err(coarse_only)  # measured: 0.23


def test_refine_with_stride_at_least_the_window_is_exact():
    model = Counting()
    x = torch.randn(1, 3, 12, 12)
    a = Occlusion(model).attribute(x, (3, 3, 3), (3, 3, 3), target=0)
    b = Occlusion(model).attribute(x, (3, 3, 3), (3, 3, 3), target=0, refine=0.1)
    assert torch.equal(a, b)


@pytest.mark.parametrize("refine", [0, -0.5, 1.5, True, "half"])
def test_refine_bad_values(refine):
    model = Counting()
    with pytest.raises(ValueError, match=r"refine must be a fraction in \(0, 1\]"):
        Occlusion(model).attribute(torch.randn(1, 3, 12, 12), (3, 2, 2), refine=refine)
    assert model.sizes == []


def test_coarse_scores_are_interpolated_along_window_origins():
    from interp_ext.attr.occlusion import _upsample_window_scores

    shape, window, stride, coarse_stride = (3, 20, 23), (3, 5, 4), (1, 3, 2), (3, 6, 4)
    origins = [torch.arange((d - w + s - 1) // s + 1) * s for d, w, s in zip(shape, window, stride)]
    coarse_origins = [torch.arange((d - w + s - 1) // s + 1) * s for d, w, s in zip(shape, window, coarse_stride)]
    linear = lambda oc, oy, ox: 0.5 * oc[:, None, None] - 2.0 * oy[None, :, None] + 3.0 * ox[None, None, :]
    coarse = torch.stack([linear(*coarse_origins).flatten(), -linear(*coarse_origins).flatten()]).double()
    est, known = _upsample_window_scores(coarse, shape, window, stride, coarse_stride)
    want = linear(*[o.clamp(max=c[-1]) for o, c in zip(origins, coarse_origins)]).flatten().double()
    torch.testing.assert_close(est, torch.stack([want, -want]), rtol=1e-12, atol=1e-12)
    on_coarse = [(o % cs == 0) & (o <= c[-1]) for o, cs, c in zip(origins, coarse_stride, coarse_origins)]
    assert torch.equal(known, (on_coarse[0][:, None, None] & on_coarse[1][None, :, None] & on_coarse[2][None, None, :]).flatten())


def test_copies_run_in_inference_mode_and_the_map_is_an_ordinary_tensor():
    from interp_ext import Occlusion, ShapleySampling

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 5))
    modes = []
    model.register_forward_hook(lambda m, i, o: modes.append(torch.is_inference_mode_enabled()))
    x = torch.rand(2, 3, 8, 8)
    occ = Occlusion(model).attribute(x, (3, 4, 4), strides=(3, 2, 2), target=1)
    shap = ShapleySampling(model).attribute(x, target=1, feature_mask=torch.arange(4).repeat_interleave(16).view(1, 1, 8, 8),
                                            n_samples=2)
    assert modes and all(modes)
    for attr in (occ, shap):
        assert not attr.is_inference()
        attr.requires_grad_()  # usable by the caller's autograd
        (attr * 2).sum().backward()
