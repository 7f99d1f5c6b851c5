"""interp_ext.compat.captum against Captum itself (a test-only dependency): the same call
through both, the same seed, the same numbers, shapes, dtypes and return forms."""
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.futures import Future

import interp_ext
from interp_ext.compat import captum as cc

ca = pytest.importorskip("captum.attr")
# Captum's own notices ("required_grads has been set automatically", hooks on ReLUs)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum")


class SmallCNN(nn.Module):
    """nn.ReLU modules only (what Captum's guided hooks catch), one of them in place."""

    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.fc = nn.Linear(6, classes)

    def forward(self, x, scale=1.0):
        h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(h.mean((2, 3))) * scale


class TwoInputCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = SmallCNN()

    def forward(self, a, b, offset):
        return self.body(a + 0.5 * b) + offset


class MLP(nn.Module):
    def __init__(self, d=10, classes=4):
        super().__init__()
        self.lin1, self.relu, self.lin2 = nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, classes)

    def forward(self, x):
        return self.lin2(self.relu(self.lin1(x.float())))


class FunctionalReLU(nn.Module):
    """Rectifies with F.relu and ReLU6: interp_ext's guided rule applies, Captum's hooks miss them."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act6 = nn.ReLU6()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.act6(F.relu(self.conv(x)) * 3).mean((2, 3)))


class MultiDimOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 12)

    def forward(self, x):
        return self.lin(x).view(-1, 2, 3, 2)


def _seed_model(m, seed=0):
    torch.manual_seed(seed)
    for p in m.parameters():
        p.data.normal_(0, 0.5)
    return m.eval()


def both(call, seed=1):
    """call(lib) for Captum and compat under the same global seed."""
    torch.manual_seed(seed)
    ours = call(cc)
    torch.manual_seed(seed)
    theirs = call(ca)
    return ours, theirs


def assert_same(ours, theirs, rtol=1e-5, atol=1e-5):
    assert type(ours) is type(theirs), (type(ours), type(theirs))
    if isinstance(theirs, tuple):
        assert len(ours) == len(theirs)
        for o, t in zip(ours, theirs):
            assert_same(o, t, rtol, atol)
        return
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, (ours.shape, theirs.shape, ours.dtype, theirs.dtype)
    torch.testing.assert_close(ours, theirs, rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def cnn():
    return _seed_model(SmallCNN())


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(3)
    return torch.rand(3, 3, 8, 8)


# ---- occlusion ------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(sliding_window_shapes=(3, 3, 3), strides=(3, 2, 2), target=2),
    dict(sliding_window_shapes=(1, 4, 4), strides=(1, 2, 2), target=[0, 1, 4], perturbations_per_eval=7,
         baselines=torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)),
    dict(sliding_window_shapes=(3, 2, 2), strides=(3, 1, 2), target=torch.tensor([1, 0, 3]), baselines=0.5,
         additional_forward_args=(2.0,), perturbations_per_eval=5),
    dict(sliding_window_shapes=(3, 8, 8), target=torch.tensor(1)),
])
def test_occlusion_images(cnn, images, kwargs):
    ours, theirs = both(lambda L: L.Occlusion(cnn).attribute(images, **kwargs))
    assert_same(ours, theirs)


def test_occlusion_tuple_inputs_args_and_baselines():
    model = _seed_model(TwoInputCNN())
    torch.manual_seed(0)
    a, b = torch.rand(2, 3, 6, 6), torch.rand(2, 3, 6, 6)
    call = lambda L: L.Occlusion(model).attribute(  # noqa: E731
        (a, b), sliding_window_shapes=((3, 2, 2), (1, 3, 3)), strides=((3, 2, 2), (1, 2, 2)), target=[1, 3],
        baselines=(torch.zeros(1, 3, 6, 6), 0.25), additional_forward_args=(torch.tensor([[0.5], [1.0]]),),
        perturbations_per_eval=4)
    assert_same(*both(call))


@pytest.mark.parametrize("case", ["vector", "int", "bool", "5d", "scalar_per_batch", "multidim_target", "no_target"])
def test_occlusion_non_image_inputs(case):
    torch.manual_seed(0)
    if case == "vector":
        model, x, kw = _seed_model(MLP()), torch.randn(4, 10), dict(sliding_window_shapes=(3,), strides=2, target=1)
    elif case == "int":
        model, x = _seed_model(MLP()), torch.randint(0, 5, (4, 10))
        kw = dict(sliding_window_shapes=(2,), target=0, baselines=2, perturbations_per_eval=3)
    elif case == "bool":
        mlp = _seed_model(MLP())
        model, x = (lambda t: mlp(t.float())), torch.rand(3, 10) > 0.5
        kw = dict(sliding_window_shapes=(4,), strides=3, target=2)
    elif case == "5d":
        lin = _seed_model(nn.Linear(2 * 3 * 4 * 4, 3))
        model, x = (lambda t: lin(t.flatten(1))), torch.randn(2, 2, 3, 4, 4)
        kw = dict(sliding_window_shapes=(1, 2, 2, 2), strides=(1, 1, 2, 2), target=1, perturbations_per_eval=6)
    elif case == "scalar_per_batch":
        mlp = _seed_model(MLP())
        model, x, kw = (lambda t: mlp(t)[:, 0].sum()), torch.randn(3, 10), dict(sliding_window_shapes=(2,))
    elif case == "multidim_target":
        model, x = _seed_model(MultiDimOut()), torch.randn(3, 6)
        kw = dict(sliding_window_shapes=(2,), target=(1, 2, 0), perturbations_per_eval=2)
    else:
        mlp = _seed_model(MLP())
        model, x, kw = (lambda t: mlp(t)[:, 1]), torch.randn(3, 10), dict(sliding_window_shapes=(5,), strides=5)
    assert_same(*both(lambda L: L.Occlusion(model).attribute(x, **kw)))


def test_occlusion_uses_the_native_batch_op(cnn, images, monkeypatch):
    calls = {"batch": 0, "accumulate": 0}
    batch, accumulate = interp_ext.ops.occlusion_batch, interp_ext.ops.occlusion_accumulate

    def counting(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(interp_ext.ops, "occlusion_batch", counting("batch", batch))
    monkeypatch.setattr(interp_ext.ops, "occlusion_accumulate", counting("accumulate", accumulate))
    cc.Occlusion(cnn).attribute(images, sliding_window_shapes=(3, 4, 4), strides=4, target=0, perturbations_per_eval=2)
    assert calls == {"batch": 2, "accumulate": 1}


# ---- Shapley --------------------------------------------------------------------------

def _grid_mask(h, w, p):
    return (torch.arange(h)[:, None] // p) * (-(-w // p)) + torch.arange(w)[None, :] // p


@pytest.mark.parametrize("kwargs", [
    dict(target=1, n_samples=6),
    dict(target=[0, 1, 2], n_samples=5, perturbations_per_eval=7, baselines=0.3),
    dict(target=torch.tensor([4, 3, 2]), n_samples=4, perturbations_per_eval=3,
         baselines=torch.rand(1, 3, 8, 8), additional_forward_args=0.5),
])
def test_shapley_images(cnn, images, kwargs):
    mask = _grid_mask(8, 8, 3)[None, None]
    call = lambda L: L.ShapleyValueSampling(cnn).attribute(images, feature_mask=mask, **kwargs)  # noqa: E731
    assert_same(*both(call), rtol=1e-4, atol=1e-5)


def test_shapley_per_sample_and_per_channel_masks(cnn, images):
    mask = torch.stack([_grid_mask(8, 8, p) for p in (2, 4, 8)])[:, None].expand(3, 3, 8, 8).clone()
    mask[:, 1] = mask[:, 1] + mask.max() + 1  # channel 1 has its own features
    call = lambda L: L.ShapleyValueSampling(cnn).attribute(images, feature_mask=mask, target=0, n_samples=3,  # noqa: E731
                                                            perturbations_per_eval=4)
    assert_same(*both(call), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["tuple", "int", "bool", "scalar_per_batch", "multi_output", "exact", "default_mask"])
def test_shapley_forms(case):
    torch.manual_seed(0)
    mlp = _seed_model(MLP(6, 3))
    if case == "tuple":
        model = lambda a, b, k: mlp(torch.cat([a, b * k], 1))  # noqa: E731
        x = (torch.randn(3, 3), torch.randn(3, 3))
        kw = dict(feature_mask=(torch.tensor([[0, 0, 1]]), torch.tensor([[1, 2, 2]])), target=2, n_samples=20,
                  additional_forward_args=(2.0,), baselines=(0.1, torch.zeros(1, 3)), perturbations_per_eval=4)
        cls = "ShapleyValueSampling"
    elif case == "int":
        model, x = mlp, torch.randint(0, 9, (3, 6))
        kw, cls = dict(target=1, n_samples=20, baselines=1, feature_mask=torch.tensor([[0, 0, 1, 1, 2, 3]])), "ShapleyValueSampling"
    elif case == "bool":
        model, x = mlp, torch.rand(3, 6) > 0.5
        kw, cls = dict(target=0, baselines=True, feature_mask=torch.tensor([[0, 1, 1, 2, 2, 3]])), "ShapleyValues"
    elif case == "scalar_per_batch":
        model, x = (lambda t: mlp(t)[:, 0].sum()), torch.randn(4, 6)
        kw, cls = dict(feature_mask=torch.tensor([[0, 1, 1, 2, 3, 3]]), n_samples=30), "ShapleyValueSampling"
    elif case == "multi_output":
        model, x = mlp, torch.randn(2, 6)
        kw, cls = dict(feature_mask=torch.tensor([[0, 0, 1, 1, 2, 2], [2, 1, 0, 0, 1, 2]]), perturbations_per_eval=2), "ShapleyValues"
    elif case == "exact":
        model, x = mlp, torch.randn(2, 6)
        kw, cls = dict(target=2, feature_mask=torch.tensor([0, 1, 2, 3, 4, 4])), "ShapleyValues"
    else:
        model, x = mlp, torch.randn(2, 6)
        kw, cls = dict(target=1, n_samples=10, perturbations_per_eval=5), "ShapleyValueSampling"
    assert_same(*both(lambda L: getattr(L, cls)(model).attribute(x, **kw)), rtol=1e-4, atol=1e-5)


def test_shapley_attribute_future():
    mlp = _seed_model(MLP(6, 3))

    def future_model(x):
        fut = Future()
        fut.set_result(mlp(x))
        return fut

    x = torch.randn(2, 6)
    ours, theirs = both(lambda L: L.ShapleyValueSampling(future_model).attribute_future(
        x, target=1, n_samples=8, feature_mask=torch.tensor([[0, 0, 1, 1, 2, 2]])))
    assert isinstance(ours, Future)
    assert_same(ours.wait(), theirs.wait(), rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match="attribute_future"):
        cc.ShapleyValueSampling(future_model).attribute(x, target=1)


# ---- gradient methods ----------------------------------------------------------------

@pytest.mark.parametrize("cls,kwargs", [
    ("Saliency", dict(target=1)),
    ("Saliency", dict(target=[0, 1, 2], abs=False, additional_forward_args=2.0)),
    ("InputXGradient", dict(target=torch.tensor([3, 2, 1]))),
    ("GuidedBackprop", dict(target=4)),
    ("Deconvolution", dict(target=[1, 1, 0], additional_forward_args=(0.5,))),
])
def test_gradient_methods_images(cnn, images, cls, kwargs):
    assert_same(*both(lambda L: getattr(L, cls)(cnn).attribute(images, **kwargs)))


@pytest.mark.parametrize("cls", ["Saliency", "InputXGradient", "GuidedBackprop", "Deconvolution"])
def test_gradient_methods_tuple_inputs(cls):
    model = _seed_model(TwoInputCNN())
    torch.manual_seed(0)
    a, b = torch.rand(2, 3, 6, 6), torch.rand(2, 3, 6, 6)
    call = lambda L: getattr(L, cls)(model).attribute((a, b), target=[2, 0],  # noqa: E731
                                                      additional_forward_args=(torch.tensor([[1.0], [2.0]]),))
    ours, theirs = both(call)
    assert isinstance(ours, tuple) and len(ours) == 2
    assert_same(ours, theirs)


def test_gradient_methods_leave_the_inputs_alone(cnn, images):
    x = images.clone()
    x.grad = torch.ones_like(x)
    cc.Saliency(cnn).attribute(x, target=0)
    assert not x.requires_grad and torch.equal(x.grad, torch.ones_like(x)) and torch.equal(x, images)
    assert all(p.grad is None for p in cnn.parameters())


def test_guided_backprop_differs_on_purpose_for_functional_relu(images):
    model = _seed_model(FunctionalReLU())
    ours = cc.GuidedBackprop(model).attribute(images, target=1)
    theirs = ca.GuidedBackprop(model).attribute(images, target=1)
    plain = ca.Saliency(model).attribute(images, target=1, abs=False)
    torch.testing.assert_close(theirs, plain)  # Captum's hooks never saw a rectifier
    torch.testing.assert_close(ours, interp_ext.GuidedBackprop(model).attribute(images, target=1))
    assert (ours - theirs).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"])
def test_integrated_gradients_methods_and_delta(cnn, images, method):
    call = lambda L: L.IntegratedGradients(cnn).attribute(images, target=[0, 2, 4], n_steps=12, method=method,  # noqa: E731
                                                          return_convergence_delta=True)
    (ours, d_ours), (theirs, d_theirs) = both(call)
    assert_same(ours, theirs)
    assert_same(d_ours, d_theirs, atol=1e-4)


@pytest.mark.parametrize("baselines", [None, (0.2, -0.1), "tensor1", "tuple"])
def test_integrated_gradients_baselines_and_batching(baselines):
    model = _seed_model(TwoInputCNN())
    torch.manual_seed(0)
    a, b = torch.rand(2, 3, 6, 6), torch.rand(2, 3, 6, 6)
    if baselines == "tensor1":
        baselines = (torch.rand(1, 3, 6, 6), torch.rand(1, 3, 6, 6))
    elif baselines == "tuple":
        baselines = (0.1, torch.rand(2, 3, 6, 6))
    args = (torch.tensor([[1.0], [2.0]]),)
    for ibs in (None, 5):
        call = lambda L: L.IntegratedGradients(model).attribute(  # noqa: E731
            (a, b), baselines=baselines, target=1, additional_forward_args=args, n_steps=7, internal_batch_size=ibs,
            return_convergence_delta=True)
        (ours, d_ours), (theirs, d_theirs) = both(call)
        assert_same(ours, theirs)
        assert_same(d_ours, d_theirs, atol=1e-4)
    call = lambda L: L.IntegratedGradients(model, multiply_by_inputs=False).attribute(  # noqa: E731
        (a, b), baselines=baselines, target=1, additional_forward_args=args, n_steps=7)
    assert_same(*both(call))


def test_integrated_gradients_vector_and_scalar_outputs():
    mlp = _seed_model(MLP(6, 3))
    x = torch.randn(4, 6)
    assert_same(*both(lambda L: L.IntegratedGradients(mlp).attribute(x, target=2, n_steps=20)))
    per_sample = lambda t: mlp(t)[:, 0]  # noqa: E731
    assert_same(*both(lambda L: L.IntegratedGradients(per_sample).attribute(x, baselines=0.5, n_steps=10)))


# ---- NoiseTunnel ----------------------------------------------------------------------

@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_saliency(cnn, images, nt_type):
    call = lambda L: L.NoiseTunnel(L.Saliency(cnn)).attribute(images, nt_type=nt_type, nt_samples=5,  # noqa: E731
                                                               nt_samples_batch_size=2, stdevs=0.1, target=[0, 1, 2])
    assert_same(*both(call))


def test_noise_tunnel_integrated_gradients_delta_and_tuples():
    model = _seed_model(TwoInputCNN())
    torch.manual_seed(0)
    a, b = torch.rand(2, 3, 6, 6), torch.rand(2, 3, 6, 6)
    call = lambda L: L.NoiseTunnel(L.IntegratedGradients(model)).attribute(  # noqa: E731
        (a, b), nt_type="vargrad", nt_samples=4, nt_samples_batch_size=3, stdevs=(0.05, 0.2),
        baselines=(0.0, torch.zeros(2, 3, 6, 6)), target=[1, 2], additional_forward_args=(torch.tensor([[1.0], [2.0]]),),
        n_steps=5, return_convergence_delta=True)
    (ours, d_ours), (theirs, d_theirs) = both(call)
    assert_same(ours, theirs, atol=1e-4)
    assert d_ours.shape == (2 * 4,)
    assert_same(d_ours, d_theirs, atol=1e-4)


def test_noise_tunnel_zero_noise_and_perturbation_method(cnn, images):
    sal = cc.Saliency(cnn).attribute(images, target=1)
    sg = cc.NoiseTunnel(cc.Saliency(cnn)).attribute(images, nt_samples=3, stdevs=0.0, target=1)
    torch.testing.assert_close(sg, sal)
    call = lambda L: L.NoiseTunnel(L.Occlusion(cnn)).attribute(  # noqa: E731
        images, nt_samples=2, stdevs=0.05, sliding_window_shapes=(3, 4, 4), strides=4, target=0)
    assert_same(*both(call))


# ---- layers and neurons ---------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(target=1),
    dict(target=[0, 2, 1], relu_attributions=True),
    dict(target=3, attr_dim_summation=False),
    dict(target=2, attribute_to_layer_input=True, additional_forward_args=2.0),
])
@pytest.mark.parametrize("layer", ["conv1", "relu2", "fc"])
def test_layer_grad_cam(cnn, images, kwargs, layer):
    call = lambda L: L.LayerGradCam(cnn, getattr(cnn, layer)).attribute(images, **kwargs)  # noqa: E731
    assert_same(*both(call))


def test_layer_grad_cam_reused_layer_and_tuple_input():
    class Reused(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, a, b):
            return self.fc(self.conv(self.conv(a) + b).mean((2, 3)))

    model = _seed_model(Reused())
    torch.manual_seed(0)
    a, b = torch.rand(2, 3, 5, 5), torch.rand(2, 3, 5, 5)
    assert_same(*both(lambda L: L.LayerGradCam(model, model.conv).attribute((a, b), target=1)))


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_guided_grad_cam(cnn, images, mode):
    call = lambda L: L.GuidedGradCam(cnn, cnn.conv2).attribute(images, target=[4, 0, 1], interpolate_mode=mode)  # noqa: E731
    assert_same(*both(call))
    model = _seed_model(TwoInputCNN())
    torch.manual_seed(0)
    a, b = torch.rand(2, 3, 6, 6), torch.rand(2, 3, 6, 6)
    call = lambda L: L.GuidedGradCam(model, model.body.conv1).attribute(  # noqa: E731
        (a, b), target=2, additional_forward_args=(0.0,), interpolate_mode=mode, attribute_to_layer_input=True)
    assert_same(*both(call))


@pytest.mark.parametrize("selector", [3, (1, 2, 2), (slice(0, 2), 1, slice(None)), lambda t: t[:, 1].amax((1, 2))])
@pytest.mark.parametrize("cls", ["NeuronGuidedBackprop", "NeuronDeconvolution"])
def test_neuron_methods(cnn, images, selector, cls):
    layer = cnn.fc if isinstance(selector, int) else cnn.conv2  # an int picks one unit of a (N, K) output
    call = lambda L: getattr(L, cls)(cnn, layer).attribute(images, selector)  # noqa: E731
    assert_same(*both(call))
    call = lambda L: getattr(L, cls)(cnn, cnn.relu1).attribute(images, (2, 1, 1) if isinstance(selector, int) else (0, 1, 1),  # noqa: E731
                                                               attribute_to_neuron_input=True)
    assert_same(*both(call))


def test_interpolate_and_flags():
    m = torch.rand(2, 1, 3, 3)
    for mode in ("nearest", "bilinear", "area"):
        torch.testing.assert_close(cc.LayerAttribution.interpolate(m, (7, 5), mode),
                                   ca.LayerAttribution.interpolate(m, (7, 5), mode))
    model = _seed_model(SmallCNN())
    for name in ("Saliency", "InputXGradient", "GuidedBackprop", "Deconvolution", "Occlusion", "ShapleyValueSampling"):
        assert getattr(cc, name)(model).multiplies_by_inputs == getattr(ca, name)(model).multiplies_by_inputs
    assert cc.IntegratedGradients(model, multiply_by_inputs=False).multiplies_by_inputs is False
    assert cc.NoiseTunnel(cc.IntegratedGradients(model)).has_convergence_delta()
    assert cc.ShapleyValueSampling.get_name() == "Shapley Value Sampling"
    for name in ("Occlusion", "Saliency", "InputXGradient", "IntegratedGradients"):
        with pytest.raises(NotImplementedError):
            getattr(cc, name)(model).attribute_future()


def test_captums_noise_tunnel_can_wrap_a_compat_method(cnn, images):
    ours, theirs = both(lambda L: ca.NoiseTunnel(L.Saliency(cnn)).attribute(images, nt_samples=3, stdevs=0.1, target=1))
    assert_same(ours, theirs)


# ---- errors ---------------------------------------------------------------------------

class _Counting(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, *a):
        self.calls += 1
        return self.inner(*a)


@pytest.mark.parametrize("bad,exc,match", [
    (lambda m, x: cc.Occlusion(m).attribute(x, sliding_window_shapes=(1, 2)), ValueError, "sliding_window_shapes"),
    (lambda m, x: cc.Occlusion(m).attribute(x, sliding_window_shapes=(3, 9, 2)), ValueError, "sliding_window_shapes"),
    (lambda m, x: cc.Occlusion(m).attribute(x, sliding_window_shapes=(3, 2, 2), strides=(1, 3, 1)), ValueError, "strides"),
    (lambda m, x: cc.Occlusion(m).attribute(x, sliding_window_shapes=(3, 2, 2), perturbations_per_eval=0), ValueError,
     "perturbations_per_eval"),
    (lambda m, x: cc.Occlusion(m).attribute(x, sliding_window_shapes=(3, 2, 2), baselines=torch.zeros(2, 3, 8, 8)),
     ValueError, "baselines"),
    (lambda m, x: cc.Occlusion(m).attribute(x, sliding_window_shapes=(3, 2, 2), target=[0, 1]), ValueError, "target"),
    (lambda m, x: cc.ShapleyValueSampling(m).attribute(x, feature_mask=torch.zeros(8, 8)), TypeError, "feature_mask"),
    (lambda m, x: cc.ShapleyValueSampling(m).attribute(x, feature_mask=torch.zeros(1, 5, 5, dtype=torch.long)),
     ValueError, "feature_mask"),
    (lambda m, x: cc.ShapleyValueSampling(m).attribute(x, n_samples=0), ValueError, "n_samples"),
    (lambda m, x: cc.Saliency(m).attribute(x.long()), TypeError, "floating-point"),
    (lambda m, x: cc.Saliency(m).attribute(x, target=1.5), TypeError, "target"),
    (lambda m, x: cc.IntegratedGradients(m).attribute(x, method="simpson"), ValueError, "method"),
    (lambda m, x: cc.IntegratedGradients(m).attribute(x, n_steps=1, method="riemann_left"), ValueError, "n_steps"),
    (lambda m, x: cc.IntegratedGradients(m).attribute(x, baselines=torch.zeros(2, 3, 8, 8)), ValueError, "baselines"),
    (lambda m, x: cc.NoiseTunnel(cc.Saliency(m)).attribute(x, nt_type="smooth"), ValueError, "nt_type"),
    (lambda m, x: cc.NoiseTunnel(cc.Saliency(m)).attribute(x, stdevs=-1.0), ValueError, "stdevs"),
    (lambda m, x: cc.Saliency(m).attribute([x]), TypeError, "inputs"),
])
def test_bad_arguments_named_before_any_work(images, bad, exc, match):
    model = _Counting(_seed_model(SmallCNN()))
    with pytest.raises(exc, match=match) as info:
        bad(model, images)
    assert isinstance(info.value, AssertionError)  # what Captum's own checks raise
    assert model.calls == 0


def test_out_of_range_target_is_named(cnn, images):
    with pytest.raises(ValueError, match=r"target must be in \[0, 5\)"):
        cc.Saliency(cnn).attribute(images, target=[0, 7, 1])
    with pytest.raises(ValueError, match="target"):
        cc.Occlusion(cnn).attribute(images, sliding_window_shapes=(3, 4, 4), target=9)


def test_never_imports_captum():
    code = (
        "import sys, torch\n"
        "sys.modules['captum'] = None  # any import of captum now fails\n"
        "from interp_ext.compat import captum as cc\n"
        "m = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(72, 3))\n"
        "x = torch.rand(2, 3, 8, 8)\n"
        "cc.Occlusion(m).attribute(x, sliding_window_shapes=(3, 4, 4), strides=4, target=0)\n"
        "cc.ShapleyValueSampling(m).attribute(x, feature_mask=torch.arange(64).view(1, 1, 8, 8) // 16, target=1, n_samples=2)\n"
        "cc.NoiseTunnel(cc.IntegratedGradients(m)).attribute(x, nt_samples=2, target=2, n_steps=3)\n"
        "cc.GuidedGradCam(m, m[0]).attribute(x, target=1)\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_progress_bar(cnn, images, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cc.ShapleyValues(cnn).attribute(images, feature_mask=torch.arange(64).view(1, 1, 8, 8) // 16, target=0,
                                        show_progress=True, perturbations_per_eval=5)
    assert "Shapley Values attribution: 100%" in capsys.readouterr().err


def test_shapley_copies_survive_a_forward_that_writes_its_input():
    mlp = _seed_model(MLP(6, 3))
    x = torch.randn(3, 6)
    mask = torch.tensor([[0, 1, 1, 2, 3, 4]])

    def clobbering(t):
        out = mlp(t)
        t.zero_()  # the model scribbles on its input after using it
        return out

    for ppe in (1, 4):
        torch.manual_seed(5)
        clean = cc.ShapleyValueSampling(mlp).attribute(x, feature_mask=mask, target=1, n_samples=15,
                                                       perturbations_per_eval=ppe)
        torch.manual_seed(5)
        before = x.clone()
        dirty = cc.ShapleyValueSampling(clobbering).attribute(x, feature_mask=mask, target=1, n_samples=15,
                                                              perturbations_per_eval=ppe)
        torch.testing.assert_close(dirty, clean)
        assert torch.equal(x, before)  # the caller's input is never handed to the model

    def clobbering2(a, b):
        out = mlp(torch.cat([a, b], 1))
        a.zero_(), b.zero_()
        return out

    a, b = x[:, :3].clone(), x[:, 3:].clone()
    for ppe in (1, 3):
        kw = dict(sliding_window_shapes=((2,), (1,)), target=2, perturbations_per_eval=ppe)
        clean = cc.Occlusion(lambda p, q: mlp(torch.cat([p, q], 1))).attribute((a, b), **kw)
        dirty = cc.Occlusion(clobbering2).attribute((a, b), **kw)
        assert_same(dirty, clean)
        assert torch.equal(torch.cat([a, b], 1), x)


def test_exact_shapley_evaluates_each_subset_once():
    model = _Counting(_seed_model(MLP(6, 3)))
    x = torch.randn(2, 6)
    mask = torch.tensor([[0, 1, 2, 3, 4, 4]])  # 5 features: 120 orders, 2^5 subsets
    ours = cc.ShapleyValues(model).attribute(x, feature_mask=mask, target=0)
    assert model.calls == 2 ** 5  # the baseline, the input and the 30 other subsets once each
    assert_same(ours, ca.ShapleyValues(model.inner).attribute(x, feature_mask=mask, target=0), rtol=1e-4, atol=1e-5)


def test_list_of_tuple_targets_on_a_multi_dimensional_output():
    model = _seed_model(MultiDimOut())
    x = torch.randn(3, 6)
    target = [(0, 1, 1), (1, 2, 0), (0, 0, 1)]
    for cls, kw in (("Saliency", {}), ("IntegratedGradients", dict(n_steps=5)),
                    ("Occlusion", dict(sliding_window_shapes=(2,), perturbations_per_eval=2)),
                    ("ShapleyValueSampling", dict(n_samples=5, perturbations_per_eval=3))):
        assert_same(*both(lambda L: getattr(L, cls)(model).attribute(x, target=target, **kw)), rtol=1e-4, atol=1e-5)


def test_noise_tunnel_baselines_drawn_from_a_distribution():
    import numpy as np

    mlp = _seed_model(MLP(6, 3))
    x, refs = torch.randn(2, 6), torch.randn(5, 6)
    results = []
    for lib in (cc, ca):
        torch.manual_seed(2)
        np.random.seed(2)
        results.append(lib.NoiseTunnel(lib.IntegratedGradients(mlp)).attribute(
            x, nt_samples=4, stdevs=0.1, draw_baseline_from_distrib=True, baselines=refs, target=1, n_steps=6))
    assert_same(*results)


@pytest.mark.parametrize("name", ["Occlusion", "ShapleyValueSampling", "ShapleyValues", "Saliency", "InputXGradient",
                                  "IntegratedGradients", "NoiseTunnel", "GuidedBackprop", "Deconvolution",
                                  "NeuronGuidedBackprop", "NeuronDeconvolution", "GuidedGradCam", "LayerGradCam"])
def test_signatures_and_defaults_are_captums(name):
    import inspect

    def params(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    ours, theirs = getattr(cc, name), getattr(ca, name)
    assert params(ours.__init__) == params(theirs.__init__)
    assert params(ours.attribute) == params(theirs.attribute)
    if hasattr(theirs, "attribute_future") and name.startswith("Shapley"):
        assert params(ours.attribute_future) == params(theirs.attribute_future)
    assert params(cc.LayerAttribution.interpolate) == params(ca.LayerAttribution.interpolate)
