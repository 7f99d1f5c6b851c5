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
