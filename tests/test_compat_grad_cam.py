"""interp_ext.compat.pytorch_grad_cam against pytorch-grad-cam itself (a test-only
dependency): every class on ResNet-18, a small VGG and the bundled EfficientNet-Lite0,
batches of several images with a different target each, both smoothing flags.

Tolerances, on maps in [0, 1]:
- 2e-5 for the gradient and Eigen CAMs: the maps are the same formulas in float32; the
  differences are summation order (NumPy vs torch), BatchNorm folded into the
  convolutions (ours; rtol ~1e-5 on the activations) and OpenCV's INTER_LINEAR resize vs
  ``F.interpolate`` (within 2.4e-7 when upsampling, 4e-6 for FullGrad's non-integer
  downscale). Measured: at most ~2e-6 on ResNet-18 (6e-6 FullGrad with eigen_smooth).
- 1e-4 for ScoreCAM and AblationCAM, 1e-3 on the bundled model: their weights come from
  model calls on other batch compositions and layouts than theirs (rounding of each
  score ~1e-6 relative), then softmax (ScoreCAM) or the small difference of two scores
  divided by the score (AblationCAM) amplifies it.
- Eigen maps take NumPy's SVD sign, as theirs: a flipped sign would differ by O(1).
"""
import numpy as np
import pytest
import torch
from torch import nn

import interp_ext.compat.pytorch_grad_cam as ours
from interp_ext.compat.pytorch_grad_cam.utils import image as our_image
from interp_ext.compat.pytorch_grad_cam.utils import model_targets as our_targets

pgc = pytest.importorskip("pytorch_grad_cam")
theirs_targets = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
theirs_image = pytest.importorskip("pytorch_grad_cam.utils.image")
torchvision = pytest.importorskip("torchvision")

GRADIENT = ["GradCAM", "GradCAMPlusPlus", "XGradCAM", "LayerCAM", "HiResCAM", "GradCAMElementWise", "EigenGradCAM",
            "EigenCAM", "FullGrad"]
PERTURBATION = ["ScoreCAM", "AblationCAM"]


class VGGish(nn.Module):
    """A small VGG: conv-ReLU pairs and max pools, a flatten and a two-layer classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(inplace=True), nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return VGGish().eval()


@pytest.fixture(scope="module")
def bundled():
    pytest.importorskip("efficientnet_lite_pytorch")
    from interp_ext import models
    return models.load().model


def run_both(name, model, layers, x, cats, quiet=True, **call):
    """(ours, theirs): the same call through both libraries; each gets its own targets."""
    kw = {"show_progress": False} if quiet and name in PERTURBATION else {}
    with getattr(ours, name)(model=model, target_layers=layers, **kw) as cam:
        a = cam(input_tensor=x, targets=[our_targets.ClassifierOutputTarget(c) for c in cats], **call)
    with getattr(pgc, name)(model=model, target_layers=layers) as cam:
        b = cam(input_tensor=x, targets=[theirs_targets.ClassifierOutputTarget(c) for c in cats], **call)
    return a, b


def check(a, b, atol):
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == b.shape
    assert a.min() >= 0 and a.max() <= 1 + 1e-6
    np.testing.assert_allclose(a, b, atol=atol, rtol=0)


@pytest.mark.parametrize("flags", [{}, {"eigen_smooth": True}, {"aug_smooth": True}], ids=["plain", "eigen", "aug"])
@pytest.mark.parametrize("name", GRADIENT)
def test_gradient_and_eigen_cams_on_resnet18(resnet, name, flags):
    torch.manual_seed(1)
    x = torch.randn(3, 3, 64, 64)
    layers = [] if name == "FullGrad" else [resnet.layer4[-1]]
    a, b = run_both(name, resnet, layers, x, [1, 500, 999], **flags)
    check(a, b, 2e-5)


@pytest.mark.parametrize("name", ["GradCAM", "GradCAMPlusPlus", "LayerCAM", "EigenCAM"])
def test_several_layers_are_averaged_and_rescaled_as_theirs(resnet, name):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 64, 64)
    a, b = run_both(name, resnet, [resnet.layer3[-1], resnet.layer4[-1]], x, [3, 4])
    check(a, b, 2e-5)
    assert np.allclose(a.reshape(2, -1).max(1), 1, atol=1e-6)


@pytest.mark.parametrize("flags", [{}, {"eigen_smooth": True}], ids=["plain", "eigen"])
@pytest.mark.parametrize("name", GRADIENT + PERTURBATION)
def test_every_class_on_a_small_vgg(vgg, name, flags):
    torch.manual_seed(3)
    x = torch.randn(2, 3, 32, 32)
    layers = [] if name == "FullGrad" else [vgg.features[-1]]
    a, b = run_both(name, vgg, layers, x, [2, 7], **flags)
    check(a, b, 1e-4 if name in PERTURBATION else 2e-5)


@pytest.mark.parametrize("flags", [{}, {"eigen_smooth": True}], ids=["plain", "eigen"])
@pytest.mark.parametrize("name", PERTURBATION)
def test_perturbation_cams_on_resnet18(resnet, name, flags):
    torch.manual_seed(4)
    x = torch.randn(2, 3, 32, 32)
    a, b = run_both(name, resnet, [resnet.layer2[-1]], x, [10, 20], **flags)  # 128 channels
    check(a, b, 1e-4)


def test_score_cam_with_their_batch_size_attribute_and_augmentation(vgg):
    torch.manual_seed(5)
    x = torch.randn(2, 3, 32, 32)
    cam = ours.ScoreCAM(model=vgg, target_layers=[vgg.features[4]], show_progress=False)
    cam.batch_size = 5  # their way of setting it
    a = cam(input_tensor=x, targets=None, aug_smooth=True)
    theirs = pgc.ScoreCAM(model=vgg, target_layers=[vgg.features[4]])
    theirs.batch_size = 5
    b = theirs(input_tensor=x, targets=None, aug_smooth=True)
    check(a, b, 1e-4)


@pytest.mark.parametrize("name", GRADIENT)
def test_gradient_cams_on_the_bundled_model(bundled, name):
    torch.manual_seed(6)
    x = torch.rand(2, 3, 224, 224 if name == "GradCAM" else 128) * 2 - 1  # (smaller: their FullGrad takes 14 s at 224)
    layers = [] if name == "FullGrad" else [bundled._blocks[15]]
    a, b = run_both(name, bundled, layers, x, [985, 1])
    # XGrad-CAM divides by each channel's activation sum, some ~400x smaller than the
    # median on this layer (no ReLU): the folded BatchNorm and channels-last rounding
    # (~1e-6) grows to ~4e-4; the model itself in its own layout (fast=False) gives ~2e-6
    check(a, b, 1e-3 if name == "XGradCAM" else 1e-4)
    if name == "XGradCAM":
        cam = ours.XGradCAM(model=bundled, target_layers=layers)
        cam.fast = False
        check(cam(input_tensor=x, targets=[our_targets.ClassifierOutputTarget(c) for c in (985, 1)]), b, 2e-5)


@pytest.mark.parametrize("flags", [{"eigen_smooth": True}, {"aug_smooth": True}], ids=["eigen", "aug"])
def test_smoothing_on_the_bundled_model(bundled, flags):
    torch.manual_seed(7)
    # 128: a 4x4 map at the layer (at 64 its 2x2 map nearly cancels in one augmented copy and
    # the min-max scaling turns the folded / channels-last rounding into 2e-3)
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    a, b = run_both("GradCAM", bundled, [bundled._blocks[15]], x, [985, 1], **flags)
    check(a, b, 1e-4)


@pytest.mark.parametrize("name", PERTURBATION)
def test_perturbation_cams_on_the_bundled_model(bundled, name):
    """A 16-channel layer (the first block) keeps their per-channel full forwards short.
    Its output has negative values: AblationCAM's 'minimum - 1e7 per copy' ablation."""
    torch.manual_seed(8)
    x = torch.rand(2, 3, 96, 96) * 2 - 1
    from interp_ext.layers import LayerCapture, resolve_layers
    with LayerCapture(resolve_layers(bundled, "_blocks.0._bn2"), detach=True) as cap, torch.no_grad():
        bundled(x)
    assert float(cap.get()[0].min()) < 0
    a, b = run_both(name, bundled, [bundled._blocks[0]._bn2], x, [985, 1])
    check(a, b, 1e-3)


def test_top1_targets_when_none_and_cam_outputs(resnet):
    torch.manual_seed(9)
    x = torch.randn(3, 3, 64, 64)
    with ours.GradCAM(model=resnet, target_layers=[resnet.layer4[-1]]) as cam:
        a = cam(input_tensor=x, targets=None)
        torch.testing.assert_close(cam.outputs, resnet(x), rtol=1e-4, atol=1e-5)
    with pgc.GradCAM(model=resnet, target_layers=[resnet.layer4[-1]]) as cam:
        b = cam(input_tensor=x, targets=None)
    check(a, b, 2e-5)


def test_their_target_objects_work_unchanged(resnet):
    """Only the CAM import changed: pytorch-grad-cam's own target classes are callables."""
    torch.manual_seed(10)
    x = torch.randn(2, 3, 64, 64)
    ts = [theirs_targets.ClassifierOutputSoftmaxTarget(5), theirs_targets.ClassifierOutputTarget(6)]
    a = ours.GradCAM(model=resnet, target_layers=[resnet.layer4[-1]])(input_tensor=x, targets=ts)
    b = pgc.GradCAM(model=resnet, target_layers=[resnet.layer4[-1]])(input_tensor=x, targets=ts)
    check(a, b, 2e-5)


@pytest.mark.parametrize("name, args", [("ClassifierOutputTarget", (3,)), ("ClassifierOutputSoftmaxTarget", (3,)),
                                        ("ClassifierOutputReST", (3,)), ("BinaryClassifierOutputTarget", (0,)),
                                        ("BinaryClassifierOutputTarget", (1,)), ("SoftmaxOutputTarget", ()),
                                        ("RawScoresOutputTarget", ())])
def test_model_targets_equal_theirs(name, args):
    out = torch.randn(4, 7)
    for o in (out, out[0]):
        torch.testing.assert_close(getattr(our_targets, name)(*args)(o), getattr(theirs_targets, name)(*args)(o))


class SegNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.body(x))


def test_semantic_segmentation_target():
    torch.manual_seed(11)
    model = SegNet().eval()
    x = torch.randn(2, 3, 16, 16)
    mask = np.zeros((16, 16), dtype=np.float32)
    mask[4:9, 5:12] = 1
    a = ours.GradCAM(model=model, target_layers=[model.body[2]])(
        input_tensor=x, targets=[our_targets.SemanticSegmentationTarget(c, mask) for c in (1, 3)])
    b = pgc.GradCAM(model=model, target_layers=[model.body[2]])(
        input_tensor=x, targets=[theirs_targets.SemanticSegmentationTarget(c, mask) for c in (1, 3)])
    check(a, b, 2e-5)


class TokenNet(nn.Module):
    """A layer with a token output (N, h*w, C), as a vision transformer's blocks."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.tokens = nn.Identity()
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        t = self.tokens(self.conv(x).flatten(2).transpose(1, 2))
        return self.fc(t.relu().mean(1))


def to_maps(t, h=8, w=8):
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)


@pytest.mark.parametrize("name", ["GradCAM", "EigenCAM", "ScoreCAM"])
def test_reshape_transform_for_token_outputs(name):
    torch.manual_seed(12)
    model = TokenNet().eval()
    x = torch.randn(2, 3, 16, 16)
    kw = {"show_progress": False} if name == "ScoreCAM" else {}
    ts = [0, 4]
    a = getattr(ours, name)(model=model, target_layers=[model.tokens], reshape_transform=to_maps, **kw)(
        input_tensor=x, targets=[our_targets.ClassifierOutputTarget(c) for c in ts])
    b = getattr(pgc, name)(model=model, target_layers=[model.tokens], reshape_transform=to_maps)(
        input_tensor=x, targets=[theirs_targets.ClassifierOutputTarget(c) for c in ts])
    check(a, b, 1e-4)
    with pytest.raises(ValueError, match="reshape_transform"):
        getattr(ours, name)(model=model, target_layers=[model.tokens], **kw)(input_tensor=x)


def test_show_cam_on_image_and_image_utils():
    rng = np.random.default_rng(0)
    img = rng.random((20, 24, 3)).astype(np.float32)
    mask = rng.random((20, 24)).astype(np.float32)
    for use_rgb in (False, True):
        for w in (0.0, 0.3, 1.0):
            a = our_image.show_cam_on_image(img, mask, use_rgb=use_rgb, image_weight=w)
            b = theirs_image.show_cam_on_image(img, mask, use_rgb=use_rgb, image_weight=w)
            assert a.dtype == np.uint8 and a.shape == b.shape
            # JET from its definition vs OpenCV's table: at most one level apart, which the
            # division by the maximum can make 2
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
    u8 = (img * 255).astype(np.uint8)
    for src in (img, u8):
        torch.testing.assert_close(our_image.preprocess_image(src, mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.4]),
                                   theirs_image.preprocess_image(src, mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.4]))
    g = rng.standard_normal((20, 24, 3)).astype(np.float32)
    np.testing.assert_array_equal(our_image.deprocess_image(g), theirs_image.deprocess_image(g))
    cam = rng.random((2, 5, 7)).astype(np.float32)
    np.testing.assert_allclose(our_image.scale_cam_image(cam, (21, 15)), theirs_image.scale_cam_image(cam, (21, 15)),
                               atol=1e-6)
    with pytest.raises(ValueError, match="range \\[0, 1\\]"):
        our_image.show_cam_on_image(img * 2, mask)
    with pytest.raises(ValueError, match="colormap"):
        our_image.show_cam_on_image(img, mask, colormap=4)


README_SCRIPT = '''
import numpy as np
import torch
from pytorch_grad_cam import GradCAM, HiResCAM, ScoreCAM, GradCAMPlusPlus, AblationCAM, XGradCAM, EigenCAM, FullGrad
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.image import show_cam_on_image, preprocess_image
from torchvision.models import resnet18

torch.manual_seed(0)
model = resnet18(weights=None)  # (the README loads ResNet50_Weights.DEFAULT; no download here)
target_layers = [model.layer4[-1]]
rgb_img = np.float32(np.random.default_rng(0).random((64, 64, 3)))
input_tensor = preprocess_image(rgb_img, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])

targets = [ClassifierOutputTarget(281)]

with GradCAM(model=model, target_layers=target_layers) as cam:
    grayscale_cam = cam(input_tensor=input_tensor, targets=targets)
    grayscale_cam = grayscale_cam[0, :]
    visualization = show_cam_on_image(rgb_img, grayscale_cam, use_rgb=True)
    model_outputs = cam.outputs
'''


def test_their_readme_example_runs_with_only_the_import_changed():
    theirs_ns, ours_ns = {}, {}
    exec(README_SCRIPT, theirs_ns)
    changed = README_SCRIPT.replace("from pytorch_grad_cam", "from interp_ext.compat.pytorch_grad_cam")
    assert changed.count("interp_ext.compat.pytorch_grad_cam") == 3
    exec(changed, ours_ns)
    assert not ours_ns["model"].training  # the constructor put it in eval mode, as theirs does
    np.testing.assert_allclose(ours_ns["grayscale_cam"], theirs_ns["grayscale_cam"], atol=2e-5)
    assert np.abs(ours_ns["visualization"].astype(int) - theirs_ns["visualization"].astype(int)).max() <= 2
    torch.testing.assert_close(ours_ns["model_outputs"], theirs_ns["model_outputs"].detach(), rtol=1e-4, atol=1e-5)


def test_bad_arguments_name_the_argument_before_any_work(vgg):
    calls = []
    hook = vgg.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        x = torch.randn(2, 3, 32, 32)
        with pytest.raises(TypeError, match="target_layers must be a list"):
            ours.GradCAM(model=vgg, target_layers=vgg.features[-1])
        with pytest.raises(ValueError, match="target_layers: .*not part of the model"):
            ours.GradCAM(model=vgg, target_layers=[nn.Conv2d(1, 1, 1)])
        cam = ours.GradCAM(model=vgg, target_layers=[vgg.features[-1]])
        with pytest.raises(ValueError, match=r"targets must give one target per sample \(2\), got 1"):
            cam(input_tensor=x, targets=[our_targets.ClassifierOutputTarget(1)])
        with pytest.raises(TypeError, match=r"targets\[1\] must be callable"):
            cam(input_tensor=x, targets=[our_targets.ClassifierOutputTarget(1), 3])
        with pytest.raises(ValueError, match="input_tensor must be batched"):
            cam(input_tensor=x[0])
        with pytest.raises(TypeError, match="aug_smooth must be True or False"):
            cam(input_tensor=x, aug_smooth="yes")
        with pytest.raises(ValueError, match="input_tensor contains NaN"):
            cam(input_tensor=x * float("nan"))
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            ours.ScoreCAM(model=vgg, target_layers=[vgg.features[-1]], batch_size=0)
        score = ours.ScoreCAM(model=vgg, target_layers=[vgg.features[-1]], show_progress=False)
        score.batch_size = -3
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            score(input_tensor=x)
        with pytest.raises(ValueError, match="ratio_channels_to_ablate"):
            ours.AblationCAM(model=vgg, target_layers=[vgg.features[-1]], ratio_channels_to_ablate=0.5)
        assert calls == []
        with pytest.raises(ValueError, match=r"targets\[0\]: category 10 is out of range"):
            cam(input_tensor=x, targets=[our_targets.ClassifierOutputTarget(10), our_targets.ClassifierOutputTarget(1)])
        with pytest.raises(ValueError, match=r"targets\[0\] must return one score"):
            cam(input_tensor=x, targets=[our_targets.RawScoresOutputTarget()] * 2)
    finally:
        hook.remove()


def test_context_manager_leaves_no_hooks_and_deletion_is_safe(resnet):
    x = torch.randn(1, 3, 64, 64)
    with ours.GradCAM(model=resnet, target_layers=[resnet.layer4[-1]]) as cam:
        cam(input_tensor=x)
    cam.__exit__(None, None, None)
    cam.__del__()
    del cam
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in resnet.modules())
    with pytest.raises(RuntimeError, match="boom"):
        with ours.EigenCAM(model=resnet, target_layers=[resnet.layer4[-1]]):
            raise RuntimeError("boom")  # not swallowed


def test_model_mode_flags_restored_after_a_call(vgg):
    cam = ours.GradCAM(model=vgg, target_layers=[vgg.features[-1]])
    assert not vgg.training  # the constructor's eval(), as theirs
    vgg.train()
    try:
        cam(input_tensor=torch.randn(2, 3, 32, 32))
        assert vgg.training and all(m.training for m in vgg.modules())
    finally:
        vgg.eval()


@pytest.mark.needs_cuda
def test_cuda_equals_cpu(resnet):
    import copy
    x = torch.randn(2, 3, 64, 64)
    for name in ["GradCAM", "EigenCAM", "ScoreCAM", "FullGrad"]:
        layers = [] if name == "FullGrad" else [resnet.layer3[-1]]
        kw = {"show_progress": False} if name == "ScoreCAM" else {}
        cpu = getattr(ours, name)(model=resnet, target_layers=layers, **kw)(input_tensor=x, targets=None)
        gpu_model = copy.deepcopy(resnet).cuda()
        layers = [] if name == "FullGrad" else [gpu_model.layer3[-1]]
        gpu = getattr(ours, name)(model=gpu_model, target_layers=layers, **kw)(input_tensor=x.cuda(), targets=None)
        np.testing.assert_allclose(gpu, cpu, atol=1e-3)
