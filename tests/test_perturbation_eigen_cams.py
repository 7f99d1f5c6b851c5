"""The first-class ScoreCAM, AblationCAM, EigenCAM, EigenGradCAM and FullGrad against
independent, naive computations of their definitions (one model call per channel, NumPy
SVD, hooks and ``.backward()``), their memory bound, argument errors raised before any
work, and the model's mode restored. Also the Grad-CAM family's ``relu=False``."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from interp_ext import AblationCAM, EigenCAM, EigenGradCAM, FullGrad, GradCAM, HiResCAM, ScoreCAM, reference
from interp_ext.layers import LayerCapture, resolve_layers


class Net(nn.Module):
    """conv-BN-ReLU, a target conv block, a head; ``dead`` channels of the target layer
    are zero everywhere (a very negative bias before its ReLU)."""

    def __init__(self, dead=(), skip=None, dynamic=False):
        super().__init__()
        self.dynamic = dynamic
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU())
        self.skip = skip
        self.proj = nn.Conv2d(6, 8, 1, stride=2) if skip == "add" else None
        self.fc = nn.Linear(14 if skip == "cat" else 8, 5)
        with torch.no_grad():
            self.stem[1].running_mean.uniform_(-0.3, 0.3)
            self.stem[1].running_var.uniform_(0.5, 1.5)
            for k in dead:
                self.block[0].bias[k] = -1e3

    def forward(self, x):
        s = self.stem(x)
        if self.dynamic and bool(s.sum() < -1e9):  # control flow on a value: torch.fx cannot trace it
            s = -s
        y = self.block(s)
        if self.skip == "add":  # a tensor from before the target layer joins after it: broadcasts
            y = y + self.proj(s)
        elif self.skip == "cat":  # ... and one that cannot broadcast: the whole-network fallback
            y = torch.cat([y, F.avg_pool2d(s, 2)], 1)
        return self.fc(y.mean((2, 3)))


def net(**kw):
    torch.manual_seed(0)
    model = Net(**kw).eval()
    model.calls = []  # the batch size of every model call
    model.register_forward_pre_hook(lambda m, args: model.calls.append(args[0].shape[0]))
    return model


def images(n=3, size=12, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def layer_output(model, layer, x):
    with LayerCapture(resolve_layers(model, layer), detach=True) as cap, torch.no_grad():
        out = model(x)
    return cap.get()[0], out


def finish(cam, size):
    """ReLU, bilinear resize, min-max per sample (a constant map: zeros)."""
    cam = F.interpolate(cam.clamp(min=0), size=size, mode="bilinear", align_corners=False)
    lo, hi = cam.amin((2, 3), keepdim=True), cam.amax((2, 3), keepdim=True)
    return torch.nan_to_num((cam - lo) / (hi - lo))


# ---- ScoreCAM ------------------------------------------------------------------------------


def naive_score_cam(model, layer, x, target):
    acts, _ = layer_output(model, layer, x)
    n, k = acts.shape[:2]
    w = torch.empty(n, k)
    with torch.no_grad():
        for i in range(n):
            for c in range(k):
                m = F.interpolate(acts[i : i + 1, c : c + 1], size=x.shape[-2:], mode="bilinear", align_corners=False)
                span = m.max() - m.min()
                m = (m - m.min()) / span if span > 0 else torch.zeros_like(m)
                w[i, c] = model(x[i : i + 1] * m)[0, target[i]]
    w = torch.softmax(w, 1)
    return finish((w[:, :, None, None] * acts).sum(1, keepdim=True), x.shape[-2:])


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_score_cam_equals_one_model_call_per_channel(batch_size):
    model = net(dead=(2, 5))
    x = images()
    acts, _ = layer_output(model, "block", x)
    assert bool((acts[:, [2, 5]] == 0).all())  # the zero-image shortcut is exercised
    target = [0, 3, 4]
    want = naive_score_cam(model, "block", x, target)
    model.calls.clear()
    got = ScoreCAM(model, "block").attribute(x, target=target, batch_size=batch_size)
    torch.testing.assert_close(got.maps, want, rtol=1e-4, atol=1e-5)
    assert model.calls[0] == 3 and max(model.calls[1:]) <= batch_size  # the memory bound
    # 3 images x 6 live channels in batches, plus one call on the zero image
    assert len(model.calls) == 1 + 1 + -(-18 // batch_size)


# ---- AblationCAM ---------------------------------------------------------------------------


def naive_ablation_cam(model, layer, x, target, value=0.0):
    acts, logits = layer_output(model, layer, x)
    (_, module), = resolve_layers(model, layer)
    n, k = acts.shape[:2]
    base = logits.gather(1, torch.as_tensor(target)[:, None])[:, 0]
    s = torch.empty(n, k)
    with torch.no_grad():
        for c in range(k):
            def ablate(mod, args, out, c=c):
                out = out.clone()
                out[:, c] = value
                return out
            h = module.register_forward_hook(ablate)
            s[:, c] = model(x).gather(1, torch.as_tensor(target)[:, None])[:, 0]
            h.remove()
    w = (base[:, None] - s) / base[:, None]
    return finish((w[:, :, None, None] * acts).sum(1, keepdim=True), x.shape[-2:])


@pytest.mark.parametrize("skip, dynamic, path", [
    (None, False, "graph"), ("add", False, "graph"), ("cat", False, "graph"),  # cut at the layer
    ("add", True, "hook"),  # not traceable: one copy of the image per call, the skip tensor broadcasts
    ("cat", True, "full"),  # ... and torch.cat cannot broadcast: every copy runs the whole model
])
@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_ablation_cam_equals_one_full_model_call_per_channel(skip, dynamic, path, batch_size):
    model = net(skip=skip, dynamic=dynamic)
    x = images()
    target = [1, 2, 0]
    want = naive_ablation_cam(model, "block", x, target)
    seen, before = [], []
    probes = [model.fc.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0])),
              model.stem[0].register_forward_pre_hook(lambda m, a: before.append(a[0].shape[0]))]
    try:
        got = AblationCAM(model, "block").attribute(x, target=target, batch_size=batch_size)
    finally:
        for p in probes:
            p.remove()
    torch.testing.assert_close(got.maps, want, rtol=1e-4, atol=1e-5)
    assert max(seen[1:]) <= batch_size  # copies per model call
    assert before[0] == 3  # the first forward: the images themselves
    if path == "graph":  # the network before the layer: once per image (and 1, 2 copies to classify the cut)
        # when a tensor from before the layer crosses the cut; never in a plain chain
        assert before[1:] == ([] if skip is None else [1, 2, 1, 1, 1])
    elif path == "hook":  # on one copy per call
        assert set(before[1:]) == {1}
    else:  # (8 channels, and the check copy in the first batch)
        assert max(before[1:]) == min(batch_size, 9)


def test_ablation_value():
    model = net()
    x = images(2)
    want = naive_ablation_cam(model, "block", x, [1, 2], value=-0.5)
    got = AblationCAM(model, "block", ablation_value=-0.5).attribute(x, target=[1, 2], batch_size=4)
    torch.testing.assert_close(got.maps, want, rtol=1e-4, atol=1e-5)


# ---- EigenCAM / EigenGradCAM ---------------------------------------------------------------


def numpy_principal(t):
    """NumPy SVD of the centred pixels; sign: the largest magnitude positive."""
    out = []
    for a in t.double().numpy():
        pts = a.reshape(a.shape[0], -1).T
        pts = pts - pts.mean(0)
        v = np.linalg.svd(pts, full_matrices=False)[2][0]
        p = pts @ v
        if abs(p.min()) > abs(p.max()):
            p = -p
        out.append(p.reshape(a.shape[1:]))
    return torch.tensor(np.array(out))[:, None].float()


def test_eigen_cam_is_the_oriented_first_principal_component():
    model = net()
    x = images(4, 16)
    acts, _ = layer_output(model, "block", x)
    got = EigenCAM(model, "block").attribute(x)
    torch.testing.assert_close(got.maps, finish(numpy_principal(acts), (16, 16)), rtol=1e-4, atol=1e-5)
    raw = EigenCAM(model, "block").attribute(x, output_size=None, normalize=False, relu=False).maps
    torch.testing.assert_close(raw, numpy_principal(acts), rtol=1e-4, atol=1e-5)
    # oriented: the largest magnitude is positive, whatever sign the SVD gave
    assert all(float(r.max()) >= float(-r.min()) for r in raw)
    flipped = EigenCAM(model, "block").attribute(-x, output_size=None, normalize=False, relu=False).maps
    assert all(float(r.max()) >= float(-r.min()) for r in flipped)


def test_eigen_grad_cam_is_the_component_of_gradients_times_activations():
    model = net()
    x = images(3, 16)
    target = torch.tensor([4, 0, 2])
    xr = x.clone()
    with LayerCapture(resolve_layers(model, "block")) as cap:
        out = model(xr)
        (a,) = cap.get()
    (g,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), a)
    got = EigenGradCAM(model, "block").attribute(x, target=target)
    torch.testing.assert_close(got.maps, finish(numpy_principal((g * a).detach()), (16, 16)), rtol=1e-4, atol=1e-5)


# ---- FullGrad ------------------------------------------------------------------------------


def test_full_grad_equals_hooks_and_backward_with_per_channel_resizes():
    model = net()
    x = images(2, 16)
    target = torch.tensor([3, 1])
    layers = [model.stem[0], model.stem[1], model.block[0], model.fc]
    outs = {}
    def keep(mod, args, out):
        out.retain_grad()
        outs[mod] = out

    hooks = [m.register_forward_hook(keep) for m in layers[:3]]
    xr = x.clone().requires_grad_(True)
    try:
        model(xr).gather(1, target[:, None]).sum().backward()
    finally:
        for h in hooks:
            h.remove()
    model.zero_grad()

    def unit(t):
        lo, hi = t.amin((2, 3), keepdim=True), t.amax((2, 3), keepdim=True)
        return torch.nan_to_num((t - lo) / (hi - lo))

    bn = model.stem[1]
    biases = {model.stem[0]: model.stem[0].bias, model.block[0]: model.block[0].bias,
              bn: bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)}
    total = unit((xr.grad * x).abs()).sum(1, keepdim=True)
    for m, b in biases.items():
        per_channel = unit((outs[m].grad * b.detach()[None, :, None, None]).abs())
        total = total + F.interpolate(per_channel, size=(16, 16), mode="bilinear", align_corners=False).sum(1, keepdim=True)
    got = FullGrad(model).attribute(x, target=target)
    assert [name for name in got.layer_maps] == ["input", "stem.0", "stem.1", "block.0"]
    torch.testing.assert_close(got.maps, unit(total), rtol=1e-4, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())  # no weight gradients


# ---- relu=False ----------------------------------------------------------------------------


def test_signed_maps_with_relu_false():
    model = net()
    x = images(3, 16)
    target = torch.tensor([0, 1, 2])
    with LayerCapture(resolve_layers(model, "block.0")) as cap:
        out = model(x.clone())
        (a,) = cap.get()
    (g,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), a)
    for cls, variant in ((GradCAM, "gradcam"), (HiResCAM, "hirescam")):
        raw = cls(model, "block.0").attribute(x, target=target, output_size=None, normalize=False, relu=False).maps
        torch.testing.assert_close(raw, reference.gradcam(a.detach(), g, variant, False, None, False))
        assert (raw < 0).any()
        normed = cls(model, "block.0").attribute(x, target=target, relu=False).maps
        torch.testing.assert_close(normed, reference.gradcam(a.detach(), g, variant, False, (16, 16), True),
                                   rtol=1e-5, atol=1e-6)
    captum = pytest.importorskip("captum.attr")
    theirs = captum.LayerGradCam(model, model.block[0]).attribute(x, target=target, relu_attributions=False)
    raw = GradCAM(model, "block.0").attribute(x, target=target, output_size=None, normalize=False, relu=False).maps
    torch.testing.assert_close(raw, theirs.detach(), rtol=1e-4, atol=1e-6)


# ---- errors before any work, the model's mode ------------------------------------------------

CALLS = {
    "ScoreCAM": lambda m, x, **kw: ScoreCAM(m, "block").attribute(x, **kw),
    "AblationCAM": lambda m, x, **kw: AblationCAM(m, "block").attribute(x, **kw),
    "EigenCAM": lambda m, x, **kw: EigenCAM(m, "block").attribute(x, **kw),
    "EigenGradCAM": lambda m, x, **kw: EigenGradCAM(m, "block").attribute(x, **kw),
    "FullGrad": lambda m, x, **kw: FullGrad(m).attribute(x, **kw),
}


@pytest.mark.parametrize("method", list(CALLS))
def test_bad_inputs_raise_naming_the_argument_before_any_forward(method):
    model = net()
    x = images(2)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    cases = [({"inputs": bad}, ValueError, "inputs contains NaN"),
             ({"inputs": x[0]}, ValueError, r"inputs must be batched"),
             ({"inputs": x.double()}, TypeError, "inputs must have the model's dtype"),
             ({"output_size": (0, 4)}, ValueError, "output_size must be")]
    if method != "FullGrad":
        cases.append(({"relu": "no"}, TypeError, "relu must be True or False"))
    if method in ("ScoreCAM", "AblationCAM"):
        cases += [({"batch_size": 0}, ValueError, "batch_size must be a positive int"),
                  ({"batch_size": 2.5}, ValueError, "batch_size must be a positive int")]
    if method != "EigenCAM":
        cases.append(({"target": [1]}, ValueError, r"target must list one int class per sample"))
    for kw, exc, match in cases:
        inputs = kw.pop("inputs", x)
        with pytest.raises(exc, match=match):
            CALLS[method](model, inputs, **kw)
    assert model.calls == []
    if method != "EigenCAM":  # (class agnostic: no target)
        with pytest.raises(ValueError, match=r"target must be in \[0, 5\)"):
            CALLS[method](model, x, target=7)  # the range needs the model's output: after one forward
        assert model.calls == [2]


def test_construction_errors():
    model = net()
    with pytest.raises(ValueError, match="ablation_value must be finite"):
        AblationCAM(model, "block", ablation_value=float("nan"))
    with pytest.raises(TypeError, match="ablation_value must be a number"):
        AblationCAM(model, "block", ablation_value="0")
    with pytest.raises(ValueError, match="layers: fc have no bias|layers: .* have no bias"):
        FullGrad(model, layers=["stem.2"])
    with pytest.raises(ValueError, match="no layer named 'blok'"):
        ScoreCAM(model, "blok")
    with pytest.raises(ValueError, match='output_size must be "input" or'):
        FullGrad(model).attribute(images(1), output_size=None)


@pytest.mark.parametrize("method", list(CALLS))
def test_train_mode_model_runs_in_eval_mode_and_gets_its_flags_back(method):
    model = net().train()
    model.stem[1].momentum = 0.5
    before = model.stem[1].running_mean.clone()
    CALLS[method](model, images(2))
    assert model.training and all(m.training for m in model.modules())
    torch.testing.assert_close(model.stem[1].running_mean, before)  # BatchNorm ran in eval mode


def test_several_layers_are_fused_and_renormalised():
    model = net()
    x = images(2, 16)
    for cls in (ScoreCAM, EigenCAM):
        res = cls(model, ["stem", "block"]).attribute(x)
        assert list(res.layer_maps) == ["stem", "block"]
        assert torch.allclose(res.maps.amax((2, 3)), torch.ones(2, 1))


@pytest.mark.parametrize("method", ["EigenCAM", "EigenGradCAM", "FullGrad", "AblationCAM"])
def test_the_maps_find_the_flower_on_the_bundled_model(method):
    pytest.importorskip("efficientnet_lite_pytorch")
    from sklearn.datasets import load_sample_image

    from interp_ext import models

    loaded = models.load()
    x = models.batch(loaded, [load_sample_image("flower.jpg")])
    rgb = loaded.denormalize(x[0])
    blossom = (rgb[0] > 0.6) & (rgb[2] < 0.55)
    make = {"EigenCAM": lambda: EigenCAM(loaded.model, "_blocks.15").attribute(x),
            "EigenGradCAM": lambda: EigenGradCAM(loaded.model, "_blocks.15").attribute(x),
            "FullGrad": lambda: FullGrad(loaded.model).attribute(x),
            # (the last 1x1 convolution's BatchNorm: ablating _blocks.15's pre-activation channels
            # to 0 mostly marks the background)
            "AblationCAM": lambda: AblationCAM(loaded.model, "_bn1").attribute(x, batch_size=128)}
    m = make[method]().maps[0, 0]
    assert m[blossom].mean() > 2 * m[~blossom].mean()
