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
