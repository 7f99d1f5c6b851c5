"""The model-randomisation sanity check and its similarities: SSIM against scikit-image,
Spearman against SciPy, the cascading / independent semantics on a tiny model, the model
given back untouched, and Grad-CAM on the bundled pretrained model."""
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import interp_ext
from interp_ext import models
from interp_ext.metrics import RandomisationResult, model_randomisation, spearman, ssim
from interp_ext.metrics.sanity import default_layers


# ---------------------------------------------------------------- similarities


def _unit(m: np.ndarray) -> np.ndarray:
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


@pytest.mark.parametrize("shape,win_size", [((4, 1, 16, 13), 7), ((3, 9, 9), 7), ((2, 3, 12, 20), 5)])
def test_ssim_matches_skimage(shape, win_size):
    from skimage.metrics import structural_similarity

    gen = torch.Generator().manual_seed(0)
    a = torch.rand(shape, generator=gen, dtype=torch.float64)
    b = a + 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)
    # skimage gets what we compare: one map per sample (channels summed)
    a2 = (a.sum(1) if a.dim() == 4 else a).numpy()
    b2 = (b.sum(1) if b.dim() == 4 else b).numpy()
    want = [structural_similarity(_unit(u), _unit(v), win_size=win_size, data_range=1.0) for u, v in zip(a2, b2)]
    got = ssim(a, b, win_size=win_size)
    assert got.dtype == torch.float64 and got.shape == (shape[0],)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)
    # an explicit data_range compares the maps as they are
    want = [structural_similarity(u, v, win_size=win_size, data_range=3.0) for u, v in zip(a2, b2)]
    np.testing.assert_allclose(ssim(a, b, data_range=3.0, win_size=win_size).numpy(), want, rtol=1e-10, atol=1e-12)


def test_ssim_scaling_and_constant_maps():
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(3, 1, 10, 10, generator=gen, dtype=torch.float64)
    b = torch.rand(3, 1, 10, 10, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(ssim(a, a), torch.ones(3, dtype=torch.float64))
    # min-max scaled first: a positive factor and a shift change nothing
    torch.testing.assert_close(ssim(a, 7 * b - 2), ssim(a, b))
    assert bool((ssim(a, b) < 0.5).all())
    flat = torch.zeros_like(a)
    torch.testing.assert_close(ssim(flat, 3 + flat), torch.ones(3, dtype=torch.float64))  # both constant
    assert bool((ssim(a, flat).abs() < 0.1).all())
    assert ssim(a.float(), b.float()).dtype == torch.float64


def test_spearman_matches_scipy():
    from scipy.stats import spearmanr

    gen = torch.Generator().manual_seed(2)
    a = torch.randn(5, 2, 8, 9, generator=gen, dtype=torch.float64)
    b = (a + torch.randn(5, 2, 8, 9, generator=gen, dtype=torch.float64)).mul(2).round()  # many ties
    a = a.round()  # ties in both
    got = spearman(a, b)
    want = [spearmanr(u.sum(0).ravel(), v.sum(0).ravel())[0] for u, v in zip(a.numpy(), b.numpy())]
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-14)
    flat = torch.randn(4, 30, generator=gen)  # (N, F) too
    np.testing.assert_allclose(spearman(flat, -flat**3).numpy(), -np.ones(4), atol=1e-12)
    constant = spearman(flat, torch.zeros_like(flat))
    assert bool(torch.isnan(constant).all())  # no ranking: NaN, as SciPy


def test_similarity_bad_arguments():
    a = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="a and b must have the same shape"):
        ssim(a, a[:, :, :7])
    with pytest.raises(ValueError, match="win_size must be at most the maps' smaller side 8"):
        ssim(a, a, win_size=9)
    with pytest.raises(ValueError, match="win_size must be an odd int"):
        ssim(a, a, win_size=4)
    with pytest.raises(ValueError, match="data_range must be None or a positive number"):
        ssim(a, a, data_range=0)
    with pytest.raises(ValueError, match=r"a and b must be non-empty maps \(N, C, H, W\) or \(N, H, W\)"):
        ssim(a[:, 0, 0], a[:, 0, 0])
    nan = a.clone()
    nan[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"b holds NaN or inf values \(samples \[1\]\)"):
        spearman(a, nan)
    with pytest.raises(TypeError, match="a must be a torch.Tensor"):
        spearman(a.numpy(), a)
    with pytest.raises(ValueError, match="at least two values per sample"):
        spearman(a[:, 0, :1, :1], a[:, 0, :1, :1])


# ---------------------------------------------------------------- a tiny model


class Gain(nn.Module):
    """A module with a parameter and no reset_parameters: re-initialised from a normal."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.full((4, 1, 1), 2.0))

    def forward(self, x):
        return x * self.gain


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 4, 3, padding=1), bn=nn.BatchNorm2d(4), act=nn.ReLU(), gain=Gain(),
        conv2=nn.Conv2d(4, 4, 3, padding=1), pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(4, 5),
    ))
    with torch.no_grad():  # trained-looking BatchNorm statistics, so their reset shows
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.num_batches_tracked.fill_(7)
    return model.eval()


def saliency(model, x, target):
    """|d score / d input|, channels summed: a map that depends on every layer."""
    x = x.detach().requires_grad_(True)
    score = model(x).gather(1, target[:, None]).sum()
    (g,) = torch.autograd.grad(score, x)
    return g.abs().sum(1, keepdim=True)


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(model, snap) -> set[str]:
    """The modules whose parameters or buffers differ from the snapshot."""
    return {k.rsplit(".", 1)[0] for k, v in model.state_dict().items() if not torch.equal(v, snap[k])}


def test_default_layers_run_from_the_output_to_the_input():
    assert default_layers(tiny_model()) == ["fc", "conv2", "gain", "bn", "conv1"]


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_cascading_and_independent_semantics(mode):
    model = tiny_model()
    snap = _snapshot(model)
    x = torch.rand(3, 3, 10, 10)
    seen, targets, bn_stats = [], [], []

    def explain(m, inputs, target):
        assert m is model
        seen.append(_changed(m, snap))
        targets.append(target.clone())
        bn_stats.append(m.bn.running_mean.clone())
        return saliency(m, inputs, target)

    res = model_randomisation(model, x, explain, mode=mode, similarity="spearman")
    order = ["fc", "conv2", "gain", "bn", "conv1"]
    assert isinstance(res, RandomisationResult) and res.layers == order and res.mode == mode
    assert seen[0] == set()  # the original model first
    if mode == "cascading":
        assert seen[1:] == [set(order[: i + 1]) for i in range(len(order))]
    else:
        assert seen[1:] == [{name} for name in order]
    # every map explains the original model's top-1 class
    with torch.no_grad():
        top1 = model(x).argmax(1)
    assert all(torch.equal(t, top1) for t in targets)
    # BatchNorm re-initialised by its reset_parameters: running statistics reset
    bn_step = 1 + order.index("bn")
    assert torch.equal(bn_stats[bn_step], torch.zeros(4))
    assert res.scores.shape == (3, 5) and res.scores.dtype == torch.float64
    assert bool((res.scores < 0.99).all())  # every layer matters to the saliency of this model
    torch.testing.assert_close(res.original, saliency(model, x, top1).double())
    assert _changed(model, snap) == set()


def test_a_layer_gets_the_same_weights_in_both_modes_and_from_any_layer_list():
    model = tiny_model()
    x = torch.rand(2, 3, 8, 8)
    drawn = {}

    def explain(mode):
        def run(m, inputs, target):
            drawn.setdefault(mode, []).append((m.conv2.weight.clone(), m.gain.gain.clone()))
            return saliency(m, inputs, target)
        return run

    model_randomisation(model, x, explain("cascading"), layers=["conv2", "gain"], seed=5)
    model_randomisation(model, x, explain("independent"), layers=["conv2", "gain"], mode="independent", seed=5)
    model_randomisation(model, x, explain("other list"), layers=["gain"], seed=5)
    model_randomisation(model, x, explain("other seed"), layers=["gain"], seed=6)
    cas, ind, other, seed6 = drawn["cascading"], drawn["independent"], drawn["other list"], drawn["other seed"]
    assert torch.equal(cas[1][0], ind[1][0])  # conv2 after its own step
    assert torch.equal(cas[2][1], ind[2][1]) and torch.equal(ind[2][1], other[1][1])  # the gain
    assert not torch.equal(other[1][1], seed6[1][1])
    # the gain has no reset_parameters: a normal draw of its RMS (2), not the constant 2
    assert ind[2][1].std() > 0.5 and not torch.equal(ind[2][1], torch.full((4, 1, 1), 2.0))


def test_the_model_is_given_back_untouched_also_after_an_error():
    model = tiny_model()
    model.train()
    model.bn.eval()  # a mix of flags
    hooks = [model.conv2.register_forward_hook(lambda *a: None), model.register_forward_pre_hook(lambda *a: None)]
    params = {k: (p, p.data_ptr()) for k, p in model.named_parameters()}
    model.fc.weight.requires_grad_(False)
    snap = _snapshot(model)
    flags = {n: m.training for n, m in model.named_modules()}
    x = torch.rand(2, 3, 8, 8)
    rng = torch.get_rng_state()  # the caller's random state is left alone

    def check():
        assert _changed(model, snap) == set()
        assert {n: m.training for n, m in model.named_modules()} == flags
        assert dict(model.named_parameters()).keys() == params.keys()
        assert all(p is params[k][0] and p.data_ptr() == params[k][1] for k, p in model.named_parameters())
        assert [p.requires_grad for p in model.parameters()] == [n != "fc.weight" for n in params]
        assert len(model.conv2._forward_hooks) == 1 and len(model._forward_pre_hooks) == 1
        assert torch.equal(torch.get_rng_state(), rng)

    calls = []

    def failing(m, inputs, target):
        calls.append(m.training)
        if len(calls) == 3:
            raise RuntimeError("explain broke")
        return saliency(m, inputs, target)

    for mode in ("cascading", "independent"):
        calls.clear()
        with pytest.raises(RuntimeError, match="explain broke"):
            model_randomisation(model, x, failing, mode=mode)
        assert calls == [False, False, False]  # explained in eval mode
        check()
        model_randomisation(model, x, saliency, target=[1, 2], mode=mode)
        check()
    for h in hooks:
        h.remove()


def _sobel(m, x, target):
    """An 'explanation' that ignores the model: the edges of the input."""
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype)
    g = x.sum(1, keepdim=True)
    gx, gy = F.conv2d(g, k[None, None], padding=1), F.conv2d(g, k.t()[None, None], padding=1)
    return (gx**2 + gy**2).sqrt()


def test_custom_similarity_and_an_explanation_that_ignores_the_model():
    model = tiny_model()
    x = torch.rand(2, 3, 9, 9)
    res = model_randomisation(model, x, _sobel, similarity=lambda a, b: (a - b).abs().flatten(1).amax(1))
    assert torch.equal(res.scores, torch.zeros(2, 5, dtype=torch.float64))
    res = model_randomisation(model, x, lambda m, i, t: saliency(m, i, t)[:, 0], similarity="spearman",
                              layers=[model.fc])  # (N, H, W) maps, a module as the layer
    assert res.layers == ["fc"] and res.original.shape == (2, 1, 9, 9)


def test_bad_arguments():
    model = tiny_model()
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"layers: the model has no layer named 'conv3'; close matches: conv2, conv1"):
        model_randomisation(model, x, saliency, layers=["fc", "conv3"])
    with pytest.raises(ValueError, match="layers: 'act' .ReLU. holds no parameters to randomise"):
        model_randomisation(model, x, saliency, layers=["act"])
    with pytest.raises(ValueError, match="layers: 'fc' is listed twice"):
        model_randomisation(model, x, saliency, layers=["fc", "fc"])
    with pytest.raises(ValueError, match="mode must be 'cascading' or 'independent', got 'top_down'"):
        model_randomisation(model, x, saliency, mode="top_down")
    with pytest.raises(ValueError, match=r"similarity must be one of \['ssim', 'spearman'\] or a callable, got 'mse'"):
        model_randomisation(model, x, saliency, similarity="mse")
    with pytest.raises(TypeError, match="similarity must be one of"):
        model_randomisation(model, x, saliency, similarity=3)
    with pytest.raises(TypeError, match="explain must be a callable"):
        model_randomisation(model, x, "gradcam")
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        model_randomisation(lambda t: t, x, saliency)
    with pytest.raises(ValueError, match="model has no parameters to randomise"):
        model_randomisation(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), x, saliency)
    with pytest.raises(ValueError, match="inputs contains NaN"):
        model_randomisation(model, x.clone().fill_(float("nan")), saliency)
    with pytest.raises(TypeError, match="seed must be an int"):
        model_randomisation(model, x, saliency, seed=1.5)
    # what explain and similarity return is checked, and the model is given back
    snap = _snapshot(model)
    with pytest.raises(ValueError, match=r"explain must return maps \(2, K, H, W\) or \(2, H, W\), got shape \(2, 64\)"):
        model_randomisation(model, x, lambda m, i, t: saliency(m, i, t).flatten(1))
    with pytest.raises(ValueError, match=r"explain must return maps of one shape, got \(2, 1, 4, 4\) \(with the layers "
                                         r"down to 'fc' randomised\) after \(2, 1, 8, 8\)"):
        model_randomisation(model, x, lambda m, i, t: saliency(m, i, t)[..., :4, :4] if m.fc.bias.sum() != snap["fc.bias"].sum()
                            else saliency(m, i, t))
    with pytest.raises(ValueError, match=r"similarity must return one score per sample, shape \(2,\), got \(\)"):
        model_randomisation(model, x, saliency, similarity=lambda a, b: (a - b).abs().sum())
    with pytest.raises(ValueError, match=r"explain returned NaN or inf maps for images \[0, 1\] \(with 'fc' randomised\)"):
        model_randomisation(model, x, lambda m, i, t: saliency(m, i, t) / (m.fc.bias == snap["fc.bias"]).all(),
                            mode="independent")
    assert _changed(model, snap) == set()


# ---------------------------------------------------------------- the pretrained model


@pytest.fixture(scope="module")
def bundled():
    return models.load()


@pytest.fixture(scope="module")
def photos(bundled):
    from sklearn.datasets import load_sample_image

    crops = [bundled.crop(load_sample_image(n)) for n in ("china.jpg", "flower.jpg")]
    return bundled.normalize(torch.stack([torch.from_numpy(np.array(c)).permute(2, 0, 1).float() / 255 for c in crops]))


def test_grad_cam_of_a_trained_model_fails_to_survive_randomisation(bundled, photos):
    model = bundled.model
    snap = _snapshot(model)

    def gradcam(m, x, target):
        return interp_ext.GradCAM(m, "_blocks.15").attribute(x, target).maps

    res = model_randomisation(model, photos, gradcam, layers=["_fc", "_bn1"])
    assert res.layers == ["_fc", "_bn1"] and res.original.shape == (2, 1, 224, 224)
    # a random classifier asks for other evidence: the maps lose most of their structure
    assert bool((res.scores[:, 0] < 0.5).all()), res.scores
    assert _changed(model, snap) == set() and not model.training


def test_an_edge_detector_survives_randomising_every_layer(bundled, photos):
    model = bundled.model
    snap = _snapshot(model)
    res = model_randomisation(model, photos, _sobel)
    assert len(res.layers) == len(default_layers(model)) and res.layers[:3] == ["_fc", "_bn1", "_conv_head"]
    assert res.layers[-1] == "_conv_stem"
    torch.testing.assert_close(res.scores, torch.ones_like(res.scores))
    assert _changed(model, snap) == set()
