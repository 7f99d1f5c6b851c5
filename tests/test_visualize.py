"""Feature visualisation on the bundled pretrained model and the sample photos: class
visualisation, intermediate features, DeepDream, inversion, fooling images, FGSM / PGD,
universal perturbations."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from interp_ext import models, visualize

DAISY, GOLDFISH, ZEBRA = 985, 1, 340


@pytest.fixture(scope="module")
def bundled():
    return models.load()


@pytest.fixture(scope="module")
def photos(bundled):
    from sklearn.datasets import load_sample_image

    crops = [bundled.crop(load_sample_image(n)) for n in ("china.jpg", "flower.jpg")]
    return torch.stack([torch.from_numpy(np.array(c)).permute(2, 0, 1).float() / 255 for c in crops])


def _predict(bundled, images01):
    with torch.no_grad():
        return bundled.model(bundled.normalize(images01)).argmax(1)


def test_class_visualization_makes_the_class_top1(bundled):
    seen = []
    res = visualize.class_visualization(bundled, [DAISY, GOLDFISH], steps=40, lr=0.1, image_size=128, seed=0,
                                        history_every=20, callback=lambda step, img, obj: seen.append(step))
    assert res.images.shape == (2, 3, 128, 128) and 0 <= float(res.images.min()) and float(res.images.max()) <= 1
    assert _predict(bundled, res.images).tolist() == [DAISY, GOLDFISH]
    # the logit rises on average: means over successive 10-step windows increase
    windows = res.objective.view(4, 10, 2).mean(1)
    assert (windows[1:] > windows[:-1]).all()
    assert seen == list(range(40)) and [s for s, _ in res.history] == [20, 40]


def test_same_seed_same_image_and_regularisers_change_it(bundled):
    kw = dict(steps=6, lr=0.1, image_size=64)
    a = visualize.class_visualization(bundled, DAISY, seed=3, **kw)
    b = visualize.class_visualization(bundled, DAISY, seed=3, **kw)
    c = visualize.class_visualization(bundled, DAISY, seed=3, norm_percentile=30.0, contribution_percentile=20.0, **kw)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)


def test_intermediate_channel_and_neuron(bundled):
    res = visualize.class_visualization(bundled, layer="_blocks.6", channel=[3, 7], steps=20, lr=0.1, image_size=96)
    assert res.objective[-1].gt(res.objective[0]).all()
    neuron = visualize.class_visualization(bundled, layer="_blocks.6", channel=5, neuron="center", batch=1, steps=10,
                                           lr=0.1, image_size=96)
    assert neuron.objective[-1, 0] > neuron.objective[0, 0]
    with pytest.raises(ValueError, match="close matches"):
        visualize.class_visualization(bundled, layer="_blocks.66", channel=1, steps=1)
    with pytest.raises(ValueError, match=r"channel must be in \[0, "):
        visualize.class_visualization(bundled, layer="_blocks.6", channel=10_000, steps=1, image_size=64)


def test_deep_dream_raises_the_layer_activation(bundled, photos):
    res = visualize.deep_dream(bundled, photos[1:], "_blocks.8", steps=8, octaves=2, lr=0.02)
    assert res.images.shape == photos[1:].shape
    last_octave = res.objective[8:, 0]
    assert last_octave[-1] > 1.2 * last_octave[0]


def test_feature_inversion_lowers_the_distance_tenfold(bundled, photos):
    small = F.interpolate(photos[1:], size=(96, 96), mode="bilinear", align_corners=False)
    res = visualize.invert_features(bundled, small, "_blocks.3", steps=150, lr=0.05, tv_weight=1e-4)
    d = res.feature_distance[:, 0]
    assert d[-1] < d[0] / 10
    # from a feature tensor instead of an image
    with torch.no_grad():
        feats = visualize._common.LayerTap(bundled.model, "_blocks.3")(bundled.normalize(small))
    res2 = visualize.invert_features(bundled, layer="_blocks.3", features=feats, image_size=96, steps=5)
    assert res2.images.shape == (1, 3, 96, 96)


def test_fooling_image_flips_to_the_target_within_8_over_255(bundled, photos):
    res = visualize.fooling_image(bundled, photos, GOLDFISH, step_size=0.5 / 255, max_steps=40)
    assert res.fooled.all(), res.steps
    assert (res.linf < 8 / 255).all() and (res.l2 > 0).all()
    assert _predict(bundled, res.images).tolist() == [GOLDFISH, GOLDFISH]


def test_fgsm_and_pgd(bundled, photos):
    clean = _predict(bundled, photos)
    eps = 4 / 255
    adv = visualize.pgd(bundled, photos, clean, eps, steps=5)
    assert (adv - photos).abs().max() <= eps + 1e-6
    assert (_predict(bundled, adv) != clean).all()
    targeted = visualize.pgd(bundled, photos, ZEBRA, 8 / 255, steps=10, targeted=True)
    assert (_predict(bundled, targeted) == ZEBRA).all()
    one = visualize.fgsm(bundled, photos, clean, eps)
    assert abs(float((one - photos).abs().max()) - eps) < 1e-6  # one full sign step
    loss = lambda imgs: F.cross_entropy(bundled.model(bundled.normalize(imgs)), clean).item()
    with torch.no_grad():
        assert loss(one) > loss(photos)  # away from the true class
    with pytest.raises(ValueError, match=r"images must be in \[0, 1\]"):
        visualize.fgsm(bundled, photos * 2, clean, eps)


def test_universal_perturbation_beats_random_noise_on_held_out_images(bundled, photos):
    torch.manual_seed(0)
    # a small "dataset": random crops and flips of the two photos at 128 px
    crops = []
    for i in range(14):
        img = photos[i % 2]
        top, left = torch.randint(0, 64, (2,)).tolist()
        c = F.interpolate(img[None, :, top : top + 160, left : left + 160], size=(128, 128), mode="bilinear",
                          align_corners=False)[0]
        crops.append(c.flip(2) if i % 3 == 0 else c)
    data = torch.stack(crops).clamp(0, 1)
    train, held_out = data[:8], data[8:]
    norm = 10 / 255
    res = visualize.universal_perturbation(bundled, train, norm, max_passes=3, deepfool_steps=6, candidates=5)
    v = res.perturbation
    assert v.abs().max() <= norm + 1e-6 and res.fooling_rate > 0
    rate = visualize.fooling_rate(bundled, held_out, v)
    # random directions of the same L2 norm (within the same L-inf ball), as the paper compares
    gen = torch.Generator().manual_seed(1)
    noise_rates = []
    for _ in range(3):
        noise = torch.randn(v.shape, generator=gen)
        noise_rates.append(visualize.fooling_rate(bundled, held_out, (noise / noise.norm() * v.norm()).clamp(-norm, norm)))
    assert rate > max(noise_rates)


class _CountingNet(torch.nn.Module):
    """A tiny 10-class CNN that counts its forward passes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(128, 10))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.head(self.features(x))


_IMG = torch.rand(2, 3, 32, 32)
_CV = dict(steps=2, image_size=32)
# (call, message, forward passes allowed before the error: 0 = checked before any model
# call; 1 = a bound that needs the model's output, checked on its first pass)
BAD_VISUALISATION_CALLS = [
    (lambda m: visualize.class_visualization(m, -1, **_CV), r"target must be >= 0", 0),
    (lambda m: visualize.class_visualization(m, 1.5, **_CV), r"target must be integer indices", 0),
    (lambda m: visualize.class_visualization(m, **_CV), r"give target \(class scores\) or layer and channel", 0),
    (lambda m: visualize.class_visualization(m, 1, layer="features.0", channel=0, **_CV), r"not both", 0),
    (lambda m: visualize.class_visualization(m, layer="features.0", **_CV), r"give target", 0),
    (lambda m: visualize.class_visualization(m, 1, neuron="center", **_CV), r"neuron: a neuron belongs to a layer", 0),
    (lambda m: visualize.class_visualization(m, layer="features.0", channel=0, neuron=(1,), **_CV), r"neuron must be None", 0),
    (lambda m: visualize.class_visualization(m, 1, jitter=-1, **_CV), r"jitter, blur_every", 0),
    (lambda m: visualize.class_visualization(m, 1, blur_sigma=0.0, **_CV), r"blur_sigma must be > 0", 0),
    (lambda m: visualize.class_visualization(m, 1, norm_percentile=100.0, **_CV), r"norm_percentile must be in \[0, 100\)", 0),
    (lambda m: visualize.class_visualization(m, 10, **_CV), r"target must be in \[0, 10\)", 1),
    (lambda m: visualize.class_visualization(m, layer="features.0", channel=8, **_CV), r"channel must be in \[0, 8\)", 1),
    (lambda m: visualize.class_visualization(m, layer="features.0", channel=0, neuron=(40, 0), **_CV), r"neuron \(y, x\) must be inside", 1),
    (lambda m: visualize.deep_dream(m, _IMG * 2, "features.0", steps=1), r"image must be in \[0, 1\]", 0),
    (lambda m: visualize.deep_dream(m, _IMG, "features.0", steps=1, lr=0.0), r"lr > 0", 0),
    (lambda m: visualize.invert_features(m, _IMG - 1, "features.0", steps=1), r"image must be in \[0, 1\]", 0),
    (lambda m: visualize.invert_features(m, _IMG, "features.0", steps=1, tv_beta=0.0), r"tv_beta > 0", 0),
    (lambda m: visualize.invert_features(m, None, "features.0", features=torch.full((1, 8, 32, 32), float("nan")), steps=1),
     r"features must be a finite", 0),
    (lambda m: visualize.fgsm(m, _IMG * float("nan"), 0, 0.1), r"images must be in \[0, 1\]", 0),
    (lambda m: visualize.fgsm(m, _IMG, [0, 10], 0.1), r"labels must be in \[0, 10\)", 1),
    (lambda m: visualize.pgd(m, _IMG, [0, 1], 0.1, step_size=-1.0), r"step_size must be > 0", 0),
    (lambda m: visualize.pgd(m, _IMG, [0, -1], 0.1), r"labels must be >= 0", 0),
    (lambda m: visualize.pgd(m, _IMG, [0, 10], 0.1), r"labels must be in \[0, 10\)", 1),
    (lambda m: visualize.fooling_image(m, _IMG, 10), r"target_class must be in \[0, 10\)", 1),
    (lambda m: visualize.fooling_image(m, _IMG, [1, 2, 3]), r"target_class: one per image \(2\), got 3", 0),
    (lambda m: visualize.fooling_rate(m, _IMG, torch.zeros(3, 5, 5)), r"perturbation must be \(3, H, W\)", 0),
    (lambda m: visualize.universal_perturbation(m, _IMG, 0.1, max_passes=0), r"max_passes >= 1", 0),
    (lambda m: visualize.universal_perturbation(m, _IMG, 0.1, candidates=11), r"candidates must be at most the model's 10", 1),
]


@pytest.mark.parametrize("call, match, passes", BAD_VISUALISATION_CALLS)
def test_bad_inputs_raise_before_any_step(call, match, passes):
    """A clear error naming the argument; raised before any model call, or for bounds that
    need the model's output, on the first forward pass (no step taken)."""
    net = _CountingNet().eval()
    with pytest.raises(ValueError, match=match):
        call(net)
    assert net.calls == passes
