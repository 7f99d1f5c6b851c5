"""Grad-CAM family methods against Captum, pytorch-grad-cam, hand-computed gradients,
CAM, and a real photo on the bundled model."""
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from interp_ext import (CAM, GradCAM, GradCAMPlusPlus, GuidedBackprop, GuidedGradCAM, HiResCAM, LayerCAM, XGradCAM,
                        reference)
from interp_ext.layers import LayerCapture, resolve_layers

METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM, "layercam": LayerCAM, "hirescam": HiResCAM}


@pytest.fixture(scope="module")
def resnet():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def activations_and_gradients(model, layer, x, target):
    """Independent computation: capture the layer output, differentiate the target logits."""
    xr = x.clone().requires_grad_()
    with LayerCapture(resolve_layers(model, layer)) as cap:
        out = model(xr)
        (a,) = cap.get()
    (g,) = torch.autograd.grad(out.gather(1, torch.as_tensor(target)[:, None]).sum(), a)
    return a.detach(), g


def test_raw_gradcam_equals_captum_layergradcam(resnet):
    captum = pytest.importorskip("captum.attr")
    x = torch.randn(3, 3, 224, 224)
    ours = GradCAM(resnet, "layer4").attribute(x, target=[1, 500, 999], output_size=None, normalize=False)
    theirs = captum.LayerGradCam(resnet, resnet.layer4).attribute(x, target=[1, 500, 999], relu_attributions=True)
    assert ours.maps.shape == (3, 1, 7, 7)
    torch.testing.assert_close(ours.maps, theirs.detach(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("variant", ["gradcam", "xgradcam", "layercam", "hirescam", "gradcam++"])
def test_upsampled_maps_agree_with_pytorch_grad_cam(resnet, variant):
    """pytorch-grad-cam normalises (with a 1e-7 epsilon) before an OpenCV resize; we
    resize, then normalise. On 7x7 -> 224x224 maps the two orders differ by < 1e-4.
    Its Grad-CAM++ also adds 1e-6 to the alpha denominator, which dominates when the
    gradients are ~1e-4 (random weights): compared only loosely."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    classes = {"gradcam": pgc.GradCAM, "xgradcam": pgc.XGradCAM, "layercam": pgc.LayerCAM,
               "hirescam": pgc.HiResCAM, "gradcam++": pgc.GradCAMPlusPlus}
    x = torch.randn(2, 3, 224, 224)
    target = [1, 500]
    ours = METHODS[variant](resnet, "layer4").attribute(x, target=target).maps[:, 0]
    with classes[variant](model=resnet, target_layers=[resnet.layer4]) as cam:
        theirs = torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in target]))
    tol = 0.1 if variant == "gradcam++" else 1e-4
    torch.testing.assert_close(ours, theirs, rtol=0, atol=tol)


@pytest.mark.parametrize("variant", list(METHODS))
def test_every_variant_equals_reference_on_hand_computed_gradients(resnet, variant):
    x = torch.randn(2, 3, 96, 96)
    target = [3, 7]
    a, g = activations_and_gradients(resnet, "layer3", x, target)
    want = reference.gradcam(a.double(), g.double(), variant, True, (96, 96), True)
    got = METHODS[variant](resnet, "layer3").attribute(x, target=target)
    torch.testing.assert_close(got.maps.double(), want, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(got.logits, resnet(x))


def test_cam_equals_gradcam_up_to_scale_on_gap_linear_head(resnet):
    x = torch.randn(2, 3, 160, 160)
    cam = CAM(resnet, "layer4", "fc").attribute(x, target=[4, 9], output_size=None, normalize=False).maps
    grad = GradCAM(resnet, "layer4").attribute(x, target=[4, 9], output_size=None, normalize=False).maps
    hw = cam.shape[-1] * cam.shape[-2]
    # d logit / d A_kij = W_ck / hw, so the Grad-CAM weights are the CAM weights / hw
    torch.testing.assert_close(grad * hw, cam, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        CAM(resnet, "layer4", "fc").attribute(x, target=[4, 9]).maps,
        GradCAM(resnet, "layer4").attribute(x, target=[4, 9]).maps, rtol=1e-4, atol=1e-5)


def test_records_autograd_only_after_the_target_layer(resnet):
    x = torch.randn(2, 3, 64, 64)
    want = GradCAM(resnet, "layer4").attribute(x, target=[1, 2]).maps
    seen = {}
    probe = resnet.layer2.register_forward_hook(lambda m, a, out: seen.update(layer2=out.requires_grad))
    try:
        with torch.no_grad():  # also works inside the caller's no_grad
            got = GradCAM(resnet, "layer4").attribute(x, target=[1, 2]).maps
        cam_res = CAM(resnet, "layer4", "fc").attribute(x)
    finally:
        probe.remove()
    assert seen["layer2"] is False  # layers before the target keep no graph
    assert cam_res.logits.grad_fn is None  # CAM records nothing at all
    assert torch.is_grad_enabled()
    torch.testing.assert_close(got, want)


def test_target_forms_and_score_functions(resnet):
    x = torch.randn(2, 3, 64, 64)
    gc_ = GradCAM(resnet, "layer4")
    top1 = resnet(x).argmax(1)
    base = gc_.attribute(x, target=top1).maps
    torch.testing.assert_close(gc_.attribute(x).maps, base)
    torch.testing.assert_close(gc_.attribute(x, target=top1.tolist()).maps, base)
    torch.testing.assert_close(gc_.attribute(x, target=lambda out: out.gather(1, top1[:, None])[:, 0]).maps, base)
    contrast = gc_.attribute(x, target=lambda out: out[:, 3] - out[:, 5], output_size=None, normalize=False).maps
    a, g3 = activations_and_gradients(resnet, "layer4", x, [3, 3])
    _, g5 = activations_and_gradients(resnet, "layer4", x, [5, 5])
    torch.testing.assert_close(contrast, reference.gradcam(a, g3 - g5, "gradcam", True, None, False), rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="one score per sample"):
        gc_.attribute(x, target=lambda out: out.sum())
    with pytest.raises(ValueError, match=r"target must be in \[0, 1000\)"):
        gc_.attribute(x, target=[0, 1000])


def test_inplace_relu_after_the_target_layer():
    torch.manual_seed(0)
    body = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)]
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)]
    inplace = nn.Sequential(*body, nn.ReLU(inplace=True), *head)
    plain = nn.Sequential(*body, nn.ReLU(), *head)
    x = torch.randn(3, 3, 12, 12)
    got = GradCAM(inplace, "2").attribute(x, target=[0, 1, 2], output_size=None, normalize=False).maps
    a, g = activations_and_gradients(plain, "2", x, [0, 1, 2])
    assert (a < 0).any()  # the in-place ReLU would have destroyed these
    torch.testing.assert_close(got, reference.gradcam(a, g, "gradcam", True, None, False))


def test_several_layers_fuse_normalised_maps(resnet):
    x = torch.randn(2, 3, 128, 128)
    res = GradCAM(resnet, ["layer3", resnet.layer4]).attribute(x, target=[1, 2])
    assert list(res.layer_maps) == ["layer3", "layer4"]
    single3 = GradCAM(resnet, "layer3").attribute(x, target=[1, 2]).maps
    single4 = GradCAM(resnet, "layer4").attribute(x, target=[1, 2]).maps
    torch.testing.assert_close(res.layer_maps["layer3"], single3)

    def unit(m):
        lo, hi = m.amin((2, 3), keepdim=True), m.amax((2, 3), keepdim=True)
        return torch.nan_to_num((m - lo) / (hi - lo))  # a constant map counts as zeros

    # normalize=True: the mean of the per-layer maps is scaled to [0, 1] again, as
    # pytorch-grad-cam does (two maps peaking in different places average to < 1)
    mean = (single3 + single4) / 2
    assert float(mean.amax((2, 3)).min()) < 1
    torch.testing.assert_close(res.maps, unit(mean))
    assert torch.allclose(res.maps.amax((2, 3)), torch.ones(2, 1)) and float(res.maps.min()) == 0
    # at layer resolution: layer4's raw map is resized to layer3's and both normalised;
    # normalize=False leaves their mean as it is
    raw = GradCAM(resnet, ["layer3", "layer4"]).attribute(x, target=[1, 2], output_size=None, normalize=False)
    m3, m4 = raw.layer_maps["layer3"], raw.layer_maps["layer4"]
    m4 = F.interpolate(m4, size=m3.shape[-2:], mode="bilinear", align_corners=False)

    assert raw.maps.shape == m3.shape
    torch.testing.assert_close(raw.maps, (unit(m3) + unit(m4)) / 2)
    normed = GradCAM(resnet, ["layer3", "layer4"]).attribute(x, target=[1, 2], output_size=None)
    n4 = F.interpolate(normed.layer_maps["layer4"], size=m3.shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(normed.maps, unit((unit(normed.layer_maps["layer3"]) + unit(n4)) / 2))


def test_fusing_renormalises_resized_maps():
    from interp_ext.attr.cam import fuse_layer_maps as _fuse

    fine = torch.rand(1, 1, 6, 6)
    fine = (fine - fine.min()) / (fine.max() - fine.min())
    coarse = torch.zeros(1, 1, 3, 3)
    coarse[0, 0, 1, 1] = 1.0  # an interior peak: bilinear upsampling does not reach it
    up = F.interpolate(coarse, size=(6, 6), mode="bilinear", align_corners=False)
    assert up.max() < 1
    mean = (fine + up / up.max()) / 2
    torch.testing.assert_close(_fuse([fine, coarse], None, normalize=False), mean)
    # normalize=True (the default): the mean scaled to [0, 1] again
    torch.testing.assert_close(_fuse([fine, coarse], None), (mean - mean.min()) / (mean.max() - mean.min()))


def test_hooks_removed_and_nothing_kept_alive(resnet):
    x = torch.randn(1, 3, 64, 64)
    refs = []
    probe = resnet.layer4.register_forward_hook(lambda m, a, out: refs.append(weakref.ref(out)))
    try:
        with GradCAM(resnet, "layer4") as cam:
            res = cam.attribute(x)
        del res
    finally:
        probe.remove()
    gc.collect()
    assert refs and all(r() is None for r in refs)
    assert all(len(m._forward_hooks) == 0 for m in resnet.modules())


def test_memory_flat_across_many_calls():
    torch.manual_seed(0)
    model = torch.nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    cam = GradCAM(model, "0")
    x = torch.randn(4, 3, 16, 16)

    def live_tensors():
        gc.collect()
        return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))

    for _ in range(20):
        cam.attribute(x)
    before = live_tensors()
    for _ in range(1000):
        cam.attribute(x)
    assert live_tensors() <= before
    assert len(model[0]._forward_hooks) == 0


def test_hooks_removed_after_an_exception():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            self.conv(x)
            raise RuntimeError("boom after the target layer")

    model = Boom()
    with pytest.raises(RuntimeError, match="boom after the target layer"):
        GradCAM(model, "conv").attribute(torch.randn(1, 3, 8, 8))
    assert len(model.conv._forward_hooks) == 0


def test_layer_errors(resnet):
    with pytest.raises(ValueError, match="no layer named 'layer5'; close matches: layer4"):
        GradCAM(resnet, "layer5")
    with pytest.raises(ValueError, match="not part of the model"):
        GradCAM(resnet, nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match=r"must output a \(N, K, h, w\) feature map"):
        GradCAM(resnet, "fc").attribute(torch.randn(1, 3, 64, 64))
    with pytest.raises(RuntimeError, match="ran 2 times"):
        shared = nn.Conv2d(3, 3, 1)
        GradCAM(nn.Sequential(shared, shared, nn.Flatten(), nn.LazyLinear(2)), "0").attribute(torch.randn(1, 3, 4, 4))
    with pytest.raises(TypeError, match="fc_layer must be an nn.Linear"):
        CAM(resnet, "layer4", "avgpool")
    with pytest.raises(ValueError, match="output_size must be"):
        GradCAM(resnet, "layer4").attribute(torch.randn(1, 3, 64, 64), output_size=(0, 3))


def test_guided_gradcam_is_guided_backprop_times_cam(resnet):
    x = torch.randn(2, 3, 64, 64)
    got = GuidedGradCAM(resnet, "layer4").attribute(x, target=[5, 6])
    want = GuidedBackprop(resnet).attribute(x, target=[5, 6]) * GradCAM(resnet, "layer4").attribute(x, target=[5, 6]).maps
    torch.testing.assert_close(got, want)


def test_gradcam_finds_the_flower_on_the_bundled_model():
    pytest.importorskip("efficientnet_lite_pytorch")
    from sklearn.datasets import load_sample_image

    from interp_ext import models

    loaded = models.load()
    x = models.batch(loaded, [load_sample_image("flower.jpg")])
    rgb = loaded.denormalize(x[0])
    blossom = (rgb[0] > 0.6) & (rgb[2] < 0.55)
    res = GradCAM(loaded.model, "_blocks.15").attribute(x)
    assert loaded.categories[int(res.logits.argmax())] == "daisy"
    m = res.maps[0, 0]
    assert m[blossom].mean() > 2 * m[~blossom].mean()
