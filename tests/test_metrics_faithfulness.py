"""The faithfulness curves against Quantus 0.6 (the same curves for the same arguments, on
maps without ties), against hand-written loops on a linear model where each curve is known
in closed form, RISE's deletion / insertion against a step-by-step loop, and bad input."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from interp_ext import metrics
from interp_ext.metrics._curves import descending_ranks, step_values

quantus = pytest.importorskip("quantus")


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()


@pytest.fixture(scope="module")
def cnn_case():
    torch.manual_seed(1)
    model = small_cnn()
    with torch.no_grad():  # running statistics that are not the defaults
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 2.0)
    x = torch.rand(3, 3, 18, 20)
    return model, x, torch.tensor([0, 3, 1])


def run_quantus(metric, model, x, y, a):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array(metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), device="cpu"))


BASELINES = ["black", "white", "mean", 0.25]


@pytest.mark.parametrize("baseline", BASELINES)
@pytest.mark.parametrize("channels,features_in_step", [(1, 36), (1, 3), (3, 20), (3, 1)])
def test_pixel_flipping_equals_quantus(cnn_case, baseline, channels, features_in_step):
    model, x, y = cnn_case
    a = torch.randn(3, channels, 18, 20)  # tie-free (a one-channel map ties only within a pixel)
    q = run_quantus(quantus.PixelFlipping(features_in_step=features_in_step, perturb_baseline=baseline,
                                          disable_warnings=True, abs=True), model, x, y, a)
    ours = metrics.pixel_flipping(model, x, a, y, features_in_step=features_in_step, perturb_baseline=baseline,
                                  abs=True, tune=False)
    assert ours.shape == q.shape == (3, 3 * 18 * 20 // features_in_step)
    np.testing.assert_allclose(ours.numpy(), q, atol=1e-6)


@pytest.mark.parametrize("baseline", BASELINES)
@pytest.mark.parametrize("patch_size", [4, 6, 7])  # 7 pads 18 x 20 to 21 x 21
def test_region_perturbation_and_selectivity_equal_quantus(cnn_case, baseline, patch_size):
    model, x, y = cnn_case
    a = torch.randn(3, 1, 18, 20)
    for order, regions in (("morf", 5), ("lerf", 100)):
        q = run_quantus(quantus.RegionPerturbation(patch_size=patch_size, order=order, regions_evaluation=regions,
                                                   perturb_baseline=baseline, disable_warnings=True), model, x, y, a)
        ours = metrics.region_perturbation(model, x, a, y, patch_size=patch_size, order=order,
                                           regions_evaluation=regions, perturb_baseline=baseline, tune=False)
        assert ours.shape == q.shape
        np.testing.assert_allclose(ours.numpy(), q, atol=1e-6)
    q = run_quantus(quantus.Selectivity(patch_size=patch_size, perturb_baseline=baseline, disable_warnings=True),
                    model, x, y, a)
    ours = metrics.selectivity(model, x, a, y, patch_size=patch_size, perturb_baseline=baseline, tune=False)
    assert ours.shape == q.shape == (3, -(-18 // patch_size) * -(-20 // patch_size))
    np.testing.assert_allclose(ours.numpy(), q, atol=1e-6)


def test_auc_per_sample_is_the_trapezoid_of_the_curve(cnn_case):
    model, x, y = cnn_case
    a = torch.randn(3, 1, 18, 20)
    for fn, kw in ((metrics.pixel_flipping, {"features_in_step": 36}), (metrics.region_perturbation, {"patch_size": 6}),
                   (metrics.selectivity, {"patch_size": 6})):
        curves = fn(model, x, a, y, tune=False, **kw)
        auc = fn(model, x, a, y, tune=False, return_auc_per_sample=True, **kw)
        np.testing.assert_allclose(auc.numpy(), np.trapezoid(curves.numpy(), dx=1, axis=1), rtol=1e-12)


@pytest.fixture(scope="module")
def bundled_case():
    pytest.importorskip("efficientnet_lite_pytorch")
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from interp_ext import GradCAM, models

    loaded = models.load()
    x = models.batch(loaded, [Image.fromarray(im) for im in load_sample_images().images])
    model = loaded.model
    with torch.no_grad():
        y = model(x).argmax(1)
    layer = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)][-1]
    cam = GradCAM(model, layer).attribute(x, y).maps
    # Grad-CAM's ReLU zeros tie, and so do a one-channel map's channels, whose order within a
    # pixel Quantus's sort leaves open (224 * 224 has no step that is a multiple of 3): break
    # both, in float64 (among 150,528 float32 values some tie exactly)
    a = cam.double().expand(-1, 3, -1, -1) + 1e-4 * torch.rand(cam.shape[0], 3, *cam.shape[2:], dtype=torch.float64)
    return model, x, y, a


@pytest.mark.parametrize("tune", [False, True])
def test_bundled_model_equals_quantus(bundled_case, tune):
    model, x, y, a = bundled_case
    atol = 1e-6 if not tune else 2e-4  # the tuned (BatchNorm-folded, channels-last) model rounds otherwise
    q = run_quantus(quantus.PixelFlipping(features_in_step=224 * 224 // 4, perturb_baseline="black",
                                          disable_warnings=True), model, x, y, a)
    ours = metrics.pixel_flipping(model, x, a, y, features_in_step=224 * 224 // 4, tune=tune, batch_size=8)
    np.testing.assert_allclose(ours.numpy(), q, atol=atol)
    q = run_quantus(quantus.RegionPerturbation(patch_size=56, regions_evaluation=5, perturb_baseline="mean",
                                               disable_warnings=True), model, x, y, a)
    ours = metrics.region_perturbation(model, x, a, y, patch_size=56, regions_evaluation=5, perturb_baseline="mean",
                                       tune=tune, batch_size=8)
    np.testing.assert_allclose(ours.numpy(), q, atol=atol)
    q = run_quantus(quantus.Selectivity(patch_size=75, disable_warnings=True), model, x, y, a)
    ours = metrics.selectivity(model, x, a, y, patch_size=75, tune=tune, batch_size=8)
    np.testing.assert_allclose(ours.numpy(), q, atol=atol)
    assert ours[:, -1].max() < ours[:, 0].min()  # a meaningful map: removing it all loses the class


# ---- closed forms on a linear model -------------------------------------------------------


class Linear(nn.Module):
    """Scores ``(w . x, 0)``: a replaced element changes the score by ``w_f (b_f - x_f)``."""

    def __init__(self, shape):
        super().__init__()
        self.w = nn.Parameter(torch.randn(shape, dtype=torch.float64))
        self.forwards = 0
        self.largest = 0

    def forward(self, x):
        self.forwards += 1
        self.largest = max(self.largest, x.shape[0])
        s = (x * self.w).flatten(1).sum(1)
        return torch.stack([s, torch.zeros_like(s)], 1)


def test_pixel_flipping_closed_form_on_a_linear_model():
    torch.manual_seed(3)
    x = torch.rand(2, 3, 6, 8, dtype=torch.float64)
    model = Linear((3, 6, 8))
    a = torch.randn(2, 3, 6, 8, dtype=torch.float64)
    fis = 12
    curves = metrics.pixel_flipping(model, x, a, 0, features_in_step=fis, perturb_baseline=0.5, softmax=False,
                                    tune=False, batch_size=7)
    for n in range(2):
        order = np.argsort(-a[n].permute(1, 2, 0).flatten().numpy(), kind="stable")  # pixel-major positions
        contrib = (model.w.detach() * (0.5 - x[n])).permute(1, 2, 0).flatten().numpy()
        start = float((model.w.detach() * x[n]).sum())
        expected = start + np.cumsum(contrib[order])[fis - 1 :: fis]
        np.testing.assert_allclose(curves[n].numpy(), expected, rtol=1e-10, atol=1e-10)
    assert model.largest <= 7


def test_region_perturbation_closed_form_on_a_linear_model():
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    model = Linear((3, 8, 8))
    a = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    curves = metrics.region_perturbation(model, x, a, 0, patch_size=4, regions_evaluation=4, perturb_baseline="black",
                                         softmax=False, tune=False)
    black = float(x.min())
    sums = a[0, 0].reshape(2, 4, 2, 4).sum((1, 3)).flatten()
    drops = []
    removed = torch.zeros(8, 8, dtype=torch.bool)
    for p in torch.argsort(-sums):
        i, j = divmod(int(p), 2)
        removed[4 * i : 4 * i + 4, 4 * j : 4 * j + 4] = True
        drops.append(float((model.w.detach() * (x[0] - black) * removed).sum()))
    np.testing.assert_allclose(curves[0].numpy(), drops, rtol=1e-10)


@pytest.mark.parametrize("insert", [False, True])
def test_deletion_and_insertion_equal_a_step_by_step_loop(insert):
    torch.manual_seed(4)
    model = small_cnn().double()
    x = torch.rand(2, 3, 12, 10, dtype=torch.float64)
    a = torch.rand(2, 1, 12, 10, dtype=torch.float64)
    step = 7
    fn = metrics.insertion if insert else metrics.deletion
    curves = fn(model, x, a, [1, 2], pixels_per_step=step, tune=False, batch_size=5)
    canvas = metrics.faithfulness._substrate("blur" if insert else "zeros", x, 5.0, 11)
    steps = -(-120 // step)
    assert curves.shape == (2, steps + 1)
    for n, t in enumerate((1, 2)):
        order = np.argsort(-a[n, 0].flatten().numpy(), kind="stable")
        current = (canvas if insert else x)[n].clone()
        source = (x if insert else canvas)[n]
        expected = []
        for i in range(steps + 1):
            with torch.no_grad():
                expected.append(float(model(current[None]).softmax(1)[0, t]))
            pix = torch.as_tensor(order[i * step : (i + 1) * step])
            r, c = pix // 10, pix % 10
            current[:, r, c] = source[:, r, c]
        np.testing.assert_allclose(curves[n].numpy(), expected, rtol=1e-10)
    auc = fn(model, x, a, [1, 2], pixels_per_step=step, tune=False, return_auc_per_sample=True)
    np.testing.assert_allclose(auc.numpy(), np.trapezoid(curves.numpy(), dx=1 / steps, axis=1), rtol=1e-12)


def test_insertion_on_a_blurred_canvas_ends_at_the_image():
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    a = torch.rand(2, 16, 16)
    curves = metrics.insertion(model, x, a, tune=False)
    with torch.no_grad():
        probs = model(x).softmax(1)
    np.testing.assert_allclose(curves[:, -1].numpy(), probs.max(1).values.double().numpy(), rtol=1e-6)


def test_mean_baseline_recurrence_equals_replacing_step_by_step():
    torch.manual_seed(5)
    ref = torch.rand(2, 3, 5, 4, dtype=torch.float64)
    steps_map = torch.randint(0, 6, (2, 1, 5, 4))
    values = step_values("mean", ref, steps_map, 6)
    for n in range(2):
        current = ref[n].clone()
        for k in range(6):
            assert torch.isclose(values[n, k], current.mean(), rtol=1e-12)
            current[:, steps_map[n, 0] == k] = values[n, k]


def test_uniform_baseline_is_seeded_and_in_range(cnn_case):
    model, x, y = cnn_case
    a = torch.randn(3, 1, 18, 20)
    kw = dict(features_in_step=36, perturb_baseline="uniform", uniform_low=0.2, uniform_high=0.4, tune=False)
    first = metrics.pixel_flipping(model, x, a, y, seed=7, **kw)
    assert torch.equal(first, metrics.pixel_flipping(model, x, a, y, seed=7, **kw))
    assert not torch.equal(first, metrics.pixel_flipping(model, x, a, y, seed=8, **kw))
    v = step_values("uniform", x, torch.zeros(3, 1, 18, 20, dtype=torch.long), 50, uniform_low=0.2, uniform_high=0.4)
    assert 0.2 <= float(v.min()) and float(v.max()) < 0.4


def test_ties_break_by_position():
    scores = torch.tensor([[1.0, 2.0, 2.0, 0.0, 2.0]])
    assert descending_ranks(scores).tolist() == [[3, 0, 1, 4, 2]]


def test_model_state_and_batches(cnn_case):
    model, x, y = cnn_case
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        out = metrics.selectivity(model, x, torch.randn(3, 1, 18, 20), y, patch_size=6, batch_size=4)
    finally:
        assert model.training  # eval while scoring, training again afterwards
        model.eval()
    assert not out.is_inference() and out.dtype == torch.float64
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_memory_bounded_by_batch_size():
    model = Linear((3, 8, 8))
    x = torch.rand(5, 3, 8, 8, dtype=torch.float64)
    metrics.deletion(model, x, torch.rand(5, 1, 8, 8, dtype=torch.float64), 0, tune=False, batch_size=3)
    assert model.largest <= 5  # the clean pass of all five images; the copies come 3 at a time
    model.largest = 0
    metrics.pixel_flipping(model, x[:1], torch.rand(1, 1, 8, 8, dtype=torch.float64), 0, features_in_step=4,
                           tune=False, batch_size=3)
    assert model.largest == 3


# ---- bad input: clear errors before any forward --------------------------------------------


BAD = [
    ({"attributions": torch.rand(3, 2, 8, 8)}, "attributions must have shape"),
    ({"attributions": torch.rand(3, 1, 8, 7)}, "attributions must have shape"),
    ({"attributions": torch.rand(2, 1, 8, 8)}, "attributions must have shape"),
    ({"attributions": torch.full((3, 1, 8, 8), float("nan"))}, "attributions holds NaN"),
    ({"features_in_step": 5}, "features_in_step must divide"),
    ({"features_in_step": 0}, "features_in_step must be a positive int"),
    ({"perturb_baseline": "grey"}, "perturb_baseline must be one of"),
    ({"perturb_baseline": torch.zeros(2, 3, 8, 8)}, "perturb_baseline must broadcast"),
    ({"batch_size": 0}, "batch_size must be a positive int"),
]


@pytest.mark.parametrize("change,match", BAD)
def test_bad_pixel_flipping_arguments(change, match):
    model = Linear((3, 8, 8))
    args = {"attributions": torch.rand(3, 1, 8, 8, dtype=torch.float64), "features_in_step": 4, **change}
    a = args.pop("attributions")
    with pytest.raises((ValueError, TypeError), match=match):
        metrics.pixel_flipping(model, torch.rand(3, 3, 8, 8, dtype=torch.float64), a, 0, tune=False, **args)
    assert model.forwards == 0


@pytest.mark.parametrize("change,match", [
    ({"patch_size": 9}, "patch_size must be at most"),
    ({"order": "best"}, "order must be"),
    ({"regions_evaluation": 0}, "regions_evaluation must be a positive int"),
])
def test_bad_region_arguments(change, match):
    model = Linear((3, 8, 8))
    with pytest.raises(ValueError, match=match):
        metrics.region_perturbation(model, torch.rand(3, 3, 8, 8, dtype=torch.float64),
                                    torch.rand(3, 1, 8, 8, dtype=torch.float64), 0, tune=False, **change)
    assert model.forwards == 0


@pytest.mark.parametrize("change,match", [
    ({"canvas": "noise"}, "canvas must be"),
    ({"pixels_per_step": -1}, "pixels_per_step must be a positive int"),
    ({"canvas": "blur", "blur_sigma": 0}, "blur_sigma must be a positive number"),
])
def test_bad_causal_arguments(change, match):
    model = Linear((3, 8, 8))
    with pytest.raises(ValueError, match=match):
        metrics.insertion(model, torch.rand(3, 3, 8, 8, dtype=torch.float64),
                          torch.rand(3, 1, 8, 8, dtype=torch.float64), 0, tune=False, **change)
    assert model.forwards == 0


def test_bad_inputs_and_target():
    model = Linear((3, 8, 8))
    a = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="inputs contains NaN"):
        metrics.deletion(model, torch.full((3, 3, 8, 8), float("nan"), dtype=torch.float64), a, 0)
    with pytest.raises(ValueError, match="target must be in"):
        metrics.deletion(model, torch.rand(3, 3, 8, 8, dtype=torch.float64), a, 5, tune=False)


def test_blur_canvas_is_rises_kernel():
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    rise = gaussian_filter(delta, 5)  # RISE's gkern(klen=11, nsig=5)
    taps = metrics.faithfulness.rise_taps(11, 5.0).numpy()
    np.testing.assert_allclose(np.outer(taps, taps), rise, rtol=1e-12, atol=1e-15)
    x = torch.rand(1, 3, 9, 12, dtype=torch.float64)
    expected = torch.nn.functional.conv2d(x, torch.from_numpy(rise).expand(3, 1, 11, 11), padding=5, groups=3)
    torch.testing.assert_close(metrics.faithfulness._substrate("blur", x, 5.0, 11), expected, rtol=1e-10, atol=1e-12)


def test_an_images_random_draws_do_not_depend_on_the_batch(cnn_case):
    model, x, y = cnn_case
    a = torch.randn(3, 1, 18, 20)
    kw = dict(patch_size=6, order="random", regions_evaluation=4, perturb_baseline="uniform", tune=False)
    whole = metrics.region_perturbation(model, x, a, y, seed=[10, 11, 12], **kw)
    part = metrics.region_perturbation(model, x[1:], a[1:], y[1:], seed=[11, 12], **kw)
    torch.testing.assert_close(part, whole[1:], rtol=0, atol=1e-6)  # float32 batches of 2 and 3 round apart
    torch.testing.assert_close(metrics.region_perturbation(model, x, a, y, seed=10, **kw), whole, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="seed must be an int or 3 ints"):
        metrics.region_perturbation(model, x, a, y, seed=[1, 2], **kw)


def test_gradient_methods_still_run_after_a_metric(cnn_case):
    # the metrics' folded copy is cached per model: made under inference mode it would hold
    # inference tensors that a later gradient method cannot save for backward
    from interp_ext import Explainer

    model, x, y = cnn_case
    metrics.deletion(model, x, torch.rand(3, 1, 18, 20), y)
    assert Explainer(model, ["saliency"]).explain(x, y).maps["saliency"].shape == (3, 18, 20)


@pytest.mark.needs_cuda
def test_cuda_curves_equal_cpu(cnn_case):
    model, x, y = cnn_case
    a = torch.randn(3, 1, 18, 20)
    gpu = model.to("cuda")
    try:
        for fn, kw in ((metrics.pixel_flipping, {"features_in_step": 36, "perturb_baseline": "mean"}),
                       (metrics.region_perturbation, {"patch_size": 7, "order": "random", "seed": 3,
                                                      "perturb_baseline": "uniform"}),
                       (metrics.insertion, {})):
            on_gpu = fn(gpu, x.cuda(), a.cuda(), y.cuda(), tune=False, **kw)
            assert on_gpu.device.type == "cuda"
            on_cpu = fn(model.cpu(), x, a, y, tune=False, **kw)
            gpu = model.to("cuda")
            torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-4, atol=1e-5)
    finally:
        model.cpu()


# ---- incremental inference of the patch chains -----------------------------------------------


@pytest.mark.parametrize("patch_size", [4, 7])
@pytest.mark.parametrize("baseline", ["black", "mean", "uniform"])
def test_incremental_patch_chains_equal_full_copies_in_float64(patch_size, baseline):
    model = small_cnn().double()
    x = torch.rand(3, 3, 18, 20, dtype=torch.float64)
    a = torch.randn(3, 1, 18, 20, dtype=torch.float64)
    kw = dict(patch_size=patch_size, perturb_baseline=baseline, seed=1, tune=False)
    full = metrics.selectivity(model, x, a, incremental=False, **kw)
    inc = metrics.selectivity(model, x, a, incremental=True, batch_size=2, **kw)  # images in groups of 2
    torch.testing.assert_close(inc, full, rtol=0, atol=1e-12)
    kw.update(order="random", regions_evaluation=7)
    torch.testing.assert_close(metrics.region_perturbation(model, x, a, incremental=True, **kw),
                               metrics.region_perturbation(model, x, a, incremental=False, **kw), rtol=0, atol=1e-12)


def test_incremental_chain_on_the_bundled_model(bundled_case):
    model, x, y, a = bundled_case
    kw = dict(patch_size=32, regions_evaluation=6, batch_size=8)
    inc = metrics.region_perturbation(model, x, a, y, incremental=True, **kw)
    full = metrics.region_perturbation(model, x, a, y, incremental=False, tune=False, **kw)
    torch.testing.assert_close(inc, full, rtol=0, atol=1e-4)


def test_incremental_needs_a_plannable_model():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            if float(y.sum()) > 1e9:  # data-dependent control flow: fx cannot trace it
                y = y * 2
            return y.mean((2, 3))

    model = Untraceable().eval()
    x, a = torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="incremental: this model cannot be planned"):
        metrics.selectivity(model, x, a, patch_size=4, incremental=True, tune=False)
    plain = metrics.selectivity(model, x, a, patch_size=4, tune=False)  # the default runs every copy in full
    torch.testing.assert_close(plain, metrics.selectivity(model, x, a, patch_size=4, incremental=False, tune=False))
    with pytest.raises(ValueError, match="incremental must be None, True or False"):
        metrics.selectivity(model, x, a, patch_size=4, incremental="yes")


def test_incremental_chain_leaves_the_inputs_alone():
    model = small_cnn()
    x, a = torch.rand(2, 3, 16, 16), torch.rand(2, 1, 16, 16)
    before = x.clone()
    metrics.selectivity(model, x, a, patch_size=4, incremental=True, tune=False)
    assert torch.equal(x, before)
