"""saliency_reduce op, SmoothGrad, and the methods on the bundled pretrained model."""
import pytest
import torch
from torch import nn
from torch.library import opcheck

from interp_ext import GuidedBackprop, Saliency, SmoothGrad, ops, reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (3, 64, 33, 17), (1, 3, 224, 224), (5, 2, 1, 1500)])
def test_saliency_reduce_matches_reference(dtype, shape):
    g = torch.randn(shape, dtype=torch.float64).to(dtype)
    got = ops.saliency_reduce(g)
    assert got.dtype == dtype and got.shape == (shape[0], shape[2], shape[3])
    # max and abs are exact in every dtype
    torch.testing.assert_close(got, reference.saliency_reduce(g), rtol=0, atol=0)


def test_saliency_reduce_non_contiguous_and_empty():
    g = torch.randn(4, 6, 10, 12)
    for view in (g.permute(0, 1, 3, 2), g[:, ::2, 1::3], g.transpose(0, 1)):
        torch.testing.assert_close(ops.saliency_reduce(view), reference.saliency_reduce(view))
    assert ops.saliency_reduce(torch.empty(0, 3, 4, 4)).shape == (0, 4, 4)
    assert ops.saliency_reduce(torch.empty(2, 3, 0, 4)).shape == (2, 0, 4)


def test_saliency_reduce_propagates_nan():
    g = torch.zeros(1, 3, 2, 2)
    g[0, 1, 0, 1] = float("nan")
    assert torch.isnan(ops.saliency_reduce(g)[0, 0, 1])
    assert torch.isnan(reference.saliency_reduce(g)[0, 0, 1])


def test_saliency_reduce_opcheck_and_errors():
    opcheck(torch.ops.interp_ext.saliency_reduce.default, (torch.randn(2, 3, 4, 5),))
    with pytest.raises(RuntimeError, match=r"grad must be 4-D \(N, C, H, W\)"):
        ops.saliency_reduce(torch.randn(3, 4, 5))
    with pytest.raises(RuntimeError, match="at least one channel"):
        ops.saliency_reduce(torch.randn(2, 0, 4, 5))
    with pytest.raises(RuntimeError, match="grad must be a floating-point"):
        ops.saliency_reduce(torch.ones(2, 3, 4, 5, dtype=torch.int32))


class Quadratic(nn.Module):
    """Score k = 0.5 * |x|^2 * (k + 1): input gradient (k + 1) * x, known in closed form."""

    def __init__(self):
        super().__init__()
        self.max_batch = 0

    def forward(self, x):
        self.max_batch = max(self.max_batch, x.shape[0])
        e = 0.5 * x.flatten(1).pow(2).sum(1, keepdim=True)
        return e * torch.arange(1, 4, dtype=x.dtype)


def test_smoothgrad_noise_is_what_it_claims():
    model = Quadratic()
    x = torch.rand(2, 3, 16, 16) * 4 - 1  # range about 4
    n, stdev = 64, 0.1
    sg = SmoothGrad(Saliency(model), n_samples=n, stdev=stdev, batch_size=10, seed=7)
    got = sg.attribute(x, target=0, abs=False)
    # gradient of target 0 is x + noise: the mean of n noisy copies is x + N(0, sigma^2 / n)
    spread = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, 1, 1, 1)
    z = (got - x) / (stdev * spread) * n**0.5
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05
    assert model.max_batch <= 10  # memory bounded by batch_size


def test_smoothgrad_independent_of_batch_size_and_reproducible():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x = torch.randn(3, 3, 8, 8)
    results = [SmoothGrad(GuidedBackprop(model), n_samples=7, batch_size=b, seed=3).attribute(x, target=[0, 1, 2]) for b in (1, 4, 100)]
    for r in results[1:]:
        torch.testing.assert_close(r, results[0])
    other_seed = SmoothGrad(GuidedBackprop(model), n_samples=7, batch_size=4, seed=4).attribute(x, target=[0, 1, 2])
    assert not torch.allclose(other_seed, results[0])


def test_smoothgrad_without_noise_is_the_method():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.ReLU(), nn.Linear(3, 3))
    x = torch.randn(4, 3, 2, 2)
    want = GuidedBackprop(model).attribute(x, target=1)
    got = SmoothGrad(GuidedBackprop(model), n_samples=3, stdev=0.0, batch_size=5).attribute(x, target=1)
    torch.testing.assert_close(got, want)


def test_smoothgrad_top1_uses_the_clean_input():
    model = Quadratic()
    x = torch.randn(2, 3, 4, 4)
    got = SmoothGrad(Saliency(model), n_samples=4, stdev=0.0).attribute(x, abs=False)
    torch.testing.assert_close(got, 3 * x)  # top-1 is class 2 (scale 3) for every sample


@pytest.mark.parametrize(
    "kwargs, match",
    [({"n_samples": 0}, "n_samples"), ({"stdev": -1.0}, "stdev"), ({"batch_size": 0}, "batch_size")],
)
def test_smoothgrad_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SmoothGrad(Saliency(nn.Identity()), **kwargs)
    with pytest.raises(TypeError, match="method must be an attribution method"):
        SmoothGrad(nn.Identity())


@pytest.fixture(scope="module")
def bundled():
    from sklearn.datasets import load_sample_image

    from interp_ext import models

    loaded = models.load()
    photos = [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]
    return loaded, models.batch(loaded, photos)


def test_bundled_model_predicts_the_photos(bundled):
    loaded, x = bundled
    with torch.no_grad():
        top5 = loaded.top_k(loaded.model(x), 5)
    names = [[c for c, _ in t] for t in top5]
    assert {"palace", "pagoda", "monastery", "bell cote", "church", "dome", "stupa"} & set(names[0]), names[0]
    assert {"daisy", "bee", "sulphur butterfly", "pot", "vase"} & set(names[1]), names[1]


def test_maps_concentrate_on_the_flower(bundled):
    """On the flower photo, guided backprop and SmoothGrad put more attribution per
    pixel on the blossom (its orange pixels) than on the background. (The raw
    gradient of this model does not: it is dominated by background noise, which is
    what SmoothGrad was invented to fix.)"""
    loaded, x = bundled
    flower = x[1:2]
    rgb = loaded.denormalize(flower[0])
    blossom = (rgb[0] > 0.6) & (rgb[2] < 0.55)
    assert 0.2 < blossom.float().mean() < 0.6
    guided = GuidedBackprop(loaded.model).attribute(flower)[0].abs().amax(0)
    smooth = ops.saliency_reduce(SmoothGrad(Saliency(loaded.model), n_samples=8, seed=0).attribute(flower))[0]
    for m in (guided, smooth):
        assert m[blossom].mean() > 1.5 * m[~blossom].mean()


class _GuidedReLU6Ref(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(0, 6)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ((x > 0) & (x < 6) & (g > 0))


class _RefReLU6(nn.Module):
    def forward(self, x):
        return _GuidedReLU6Ref.apply(x)


def test_guided_backprop_on_the_relu6_model_equals_module_swap_reference(bundled):
    """The bundled model reuses one nn.ReLU6 per block; swapping every one of them for a
    hand-written guided ReLU6 in a copy must give the same attributions."""
    import copy

    loaded, x = bundled
    ref_model = copy.deepcopy(loaded.model)
    swapped = 0
    for module in ref_model.modules():
        for name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(module, name, _RefReLU6())
                swapped += 1
    assert swapped > 10
    target = torch.tensor([3, 985])
    xr = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(ref_model(xr).gather(1, target[:, None]).sum(), xr)
    got = GuidedBackprop(loaded.model).attribute(x, target=target)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    plain = Saliency(loaded.model).attribute(x, target=target, abs=False)
    assert not torch.allclose(got, plain, rtol=1e-2, atol=1e-5)
