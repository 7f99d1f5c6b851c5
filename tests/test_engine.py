"""The planner: each planned map equals its stand-alone method; each pass runs once."""
import pytest
import torch
from torch import nn

import interp_ext
from interp_ext import (AblationCAM, Deconvolution, EigenCAM, EigenGradCAM, FullGrad, GradCAM, GradCAMPlusPlus,
                        GuidedBackprop, GuidedGradCAM, HiResCAM, LayerCAM, Occlusion, Saliency, ScoreCAM,
                        ShapleySampling, SmoothGrad, XGradCAM, grid_feature_mask, ops)
from interp_ext.engine import DEFAULT_METHODS, METHODS, Explainer


class Net(nn.Module):
    """ReLU modules, a functional ReLU6, BatchNorm and an in-place ReLU after the CAM layer."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = torch.nn.functional.relu6(self.bn(self.conv1(x)) * 3)
        x = self.act(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def net():
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():  # non-trivial running statistics
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def standalone(model, method, x, t, layer="conv2", o=None):
    """What the method's own class gives, as the CLI computes each map."""
    o = o or {}
    cams = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM, "layercam": LayerCAM,
            "hirescam": HiResCAM}
    if method in cams:
        return cams[method](model, layer).attribute(x, target=t).maps[:, 0]
    if method == "guided-gradcam":
        return GuidedGradCAM(model, layer).attribute(x, target=t)
    if method == "saliency":
        return Saliency(model).saliency_map(x, target=t)
    if method == "smoothgrad":
        sg = SmoothGrad(Saliency(model), n_samples=o.get("n_samples", 16), stdev=0.15, batch_size=o.get("batch_size", 16), seed=0)
        return ops.saliency_reduce(sg.attribute(x, target=t, abs=True))
    if method == "guided-backprop":
        return GuidedBackprop(model).attribute(x, target=t)
    if method == "deconvnet":
        return Deconvolution(model).attribute(x, target=t)
    if method == "occlusion":
        return Occlusion(model).attribute(x, (3, 4, 4), (3, 2, 2), baselines=0.0, target=t, perturbations_per_eval=7)
    if method == "shapley":
        return ShapleySampling(model).attribute(x, grid_feature_mask(x.shape[2], x.shape[3], 4), baselines=0.0,
                                                n_samples=3, target=t, perturbations_per_eval=5, seed=0)
    if method == "eigencam":
        return EigenCAM(model, layer).attribute(x).maps[:, 0]
    if method == "eigengradcam":
        return EigenGradCAM(model, layer).attribute(x, target=t).maps[:, 0]
    if method == "scorecam":
        return ScoreCAM(model, layer).attribute(x, target=t, batch_size=o.get("batch_size", 32)).maps[:, 0]
    if method == "ablationcam":
        return AblationCAM(model, layer).attribute(x, target=t, batch_size=o.get("batch_size", 32)).maps[:, 0]
    if method == "fullgrad":
        return FullGrad(model).attribute(x, target=t).maps[:, 0]
    if method == "input-x-gradient":
        return interp_ext.InputXGradient(model).attribute(x, target=t)
    if method == "integrated-gradients":
        return interp_ext.IntegratedGradients(model).attribute(x, target=t, n_steps=o.get("n_steps", 32),
                                                               batch_size=o.get("batch_size", 16))
    raise AssertionError(method)


OPTIONS = {"smoothgrad": {"n_samples": 4, "batch_size": 3}, "occlusion": {"window": (3, 4, 4), "strides": (3, 2, 2),
           "perturbations_per_eval": 7}, "shapley": {"patch": 4, "n_samples": 3, "perturbations_per_eval": 5},
           "scorecam": {"batch_size": 5}, "ablationcam": {"batch_size": 7},
           "integrated-gradients": {"n_steps": 6, "batch_size": 4}}


@pytest.mark.parametrize("target", [None, 2, [4, 0, 1]])
def test_every_planned_map_equals_its_standalone_method(target):
    model = net()
    x = torch.randn(3, 3, 12, 12)
    result = Explainer(model, METHODS, "conv2", options=OPTIONS).explain(x, target=target)
    t = result.target
    if target is None:
        assert torch.equal(t, model(x).argmax(1))
    for method in METHODS:
        want = standalone(model, method, x, t, o=OPTIONS.get(method))
        got = result.maps[method]
        assert got.shape == want.shape, method
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=method)
    torch.testing.assert_close(result.logits, model(x))


class Counter:
    def __init__(self, model):
        self.forwards = 0
        model.register_forward_pre_hook(self._count)

    def _count(self, *_):
        self.forwards += 1


@pytest.mark.parametrize("methods, passes, forwards", [
    (DEFAULT_METHODS, ["forward", "backward:plain", "backward:guided"], 1),
    (["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "guided-gradcam", "saliency", "guided-backprop"],
     ["forward", "backward:plain", "backward:guided"], 1),
    (["guided-backprop"], ["forward", "backward:guided"], 1),
    (["saliency", "deconvnet"], ["forward", "backward:plain", "backward:deconvnet"], 1),
    (["gradcam", "deconvnet", "guided-backprop"], ["forward", "backward:plain", "backward:guided", "backward:deconvnet"], 1),
    (["occlusion"], ["forward", "occlusion"], 1 + 1 + 4),  # the logits, Occlusion's clean pass, 25 windows / 7
    (["eigencam"], ["forward"], 1),
    (["eigengradcam", "gradcam", "fullgrad", "saliency"], ["forward", "backward:plain"], 1),
    (["scorecam", "eigencam"], ["forward", "scorecam"], 1 + 5),  # 2 images x 12 channels / 5
    (["ablationcam"], ["forward", "ablationcam"], 1),  # the copies run the graph after the layer, not the model
    (["saliency", "input-x-gradient", "gradcam"], ["forward", "backward:plain"], 1),  # one input gradient for both
])
def test_each_distinct_pass_runs_once(methods, passes, forwards):
    model = net()
    counter = Counter(model)
    backward = []
    original = torch.autograd.grad
    try:
        torch.autograd.grad = lambda *a, **k: backward.append(1) or original(*a, **k)
        explainer = Explainer(model, methods, "conv2", options=OPTIONS, tune=False)  # the exact batching
        result = explainer.explain(torch.randn(2, 3, 12, 12))
    finally:
        torch.autograd.grad = original
    assert explainer.plan() == passes == result.passes
    assert counter.forwards == forwards
    assert len(backward) == sum(p.startswith("backward:") for p in passes)
    assert list(result.maps) == list(dict.fromkeys(methods))


def test_several_layers_give_fused_and_per_layer_maps():
    model = net()
    x = torch.randn(2, 3, 12, 12)
    result = Explainer(model, ["gradcam", "layercam"], ["conv1", "conv2"]).explain(x)
    for variant, cls in (("gradcam", GradCAM), ("layercam", LayerCAM)):
        want = cls(model, ["conv1", "conv2"]).attribute(x, target=result.target)
        torch.testing.assert_close(result.maps[variant], want.maps[:, 0])
        assert set(result.layer_maps[variant]) == {"conv1", "conv2"}
        torch.testing.assert_close(result.layer_maps[variant]["conv1"], want.layer_maps["conv1"][:, 0])


def test_layer_resolution_maps_with_guided_gradcam_at_the_input_size():
    model = net()
    x = torch.randn(2, 3, 12, 12)
    result = Explainer(model, ["gradcam", "guided-gradcam"], "conv2", output_size=None).explain(x)
    assert result.maps["gradcam"].shape == (2, 6, 6)
    want = GradCAM(model, "conv2").attribute(x, target=result.target, output_size=None).maps[:, 0]
    torch.testing.assert_close(result.maps["gradcam"], want)
    torch.testing.assert_close(result.maps["guided-gradcam"], GuidedGradCAM(model, "conv2").attribute(x, result.target))


def test_model_in_train_mode_is_explained_in_eval_mode_and_restored():
    model = net().train()
    model.fc.eval()
    stats = model.bn.running_mean.clone()
    x = torch.randn(2, 3, 12, 12)
    result = Explainer(model, DEFAULT_METHODS, "conv2").explain(x)
    assert model.training and model.bn.training and not model.fc.training
    assert torch.equal(model.bn.running_mean, stats)
    torch.testing.assert_close(result.logits, net()(x))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(methods=["gradcam", "nope"]), ValueError, "methods: unknown 'nope'"),
    (dict(methods=[]), ValueError, "methods: unknown"),
    (dict(methods=["gradcam"], layers=None), ValueError, "layers: gradcam need a target layer"),
    (dict(methods=["gradcam"], layers="conv9"), ValueError, "layers: the model has no layer named 'conv9'; close matches: conv2, conv1"),
    (dict(methods=["saliency"], options={"saliency": {}}), ValueError, "options: 'saliency' take no options"),
    (dict(methods=["smoothgrad"], options={"smoothgrad": {"samples": 3}}), ValueError, r"options\['smoothgrad'\]: unknown samples"),
])
def test_bad_arguments(kwargs, exc, match):
    kwargs.setdefault("layers", "conv2")
    with pytest.raises(exc, match=match):
        Explainer(net(), **kwargs)


def test_bad_inputs_raise_before_any_pass():
    model = net()
    counter = Counter(model)
    explainer = Explainer(model, DEFAULT_METHODS, "conv2", tune=False)
    for x, match in ((torch.randn(3, 12, 12), "batched"), (torch.full((1, 3, 12, 12), float("nan")), "NaN"),
                     (torch.randn(1, 3, 12, 12, dtype=torch.float64), "dtype")):
        with pytest.raises((ValueError, TypeError), match=match):
            explainer.explain(x)
    with pytest.raises(ValueError, match=r"target must be in \[0, 5\)"):
        explainer.explain(torch.randn(1, 3, 12, 12), target=7)
    assert counter.forwards == 1  # only the last one ran a pass: the range needs the logits


def test_bundled_model_default_methods_equal_the_standalone_classes():
    from interp_ext import models
    loaded = models.load()
    x = torch.rand(1, 3, 224, 224) * 2 - 1
    layer = "_blocks.15"
    exact = Explainer(loaded.model, DEFAULT_METHODS, layer, tune=False).explain(x)
    tuned = Explainer(loaded.model, DEFAULT_METHODS, layer).explain(x)  # chunks, channels-last, BatchNorm folded
    assert torch.equal(tuned.target, exact.target)
    for method in DEFAULT_METHODS:
        want = standalone(loaded.model, method, x, exact.target, layer)
        torch.testing.assert_close(exact.maps[method], want, rtol=1e-5, atol=1e-6, msg=method)
        # to float rounding, except where a rectifier's input sits within rounding of its
        # bound and the folded model's gradient takes the other side (a few pixels)
        diff, scale = (tuned.maps[method] - want).abs(), want.abs().max().item()
        assert diff.mean() <= 1e-4 * scale and diff.max() <= 0.02 * scale, method


def test_tuning_tries_each_execution_on_real_work_then_keeps_the_fastest():
    from interp_ext import tuning
    model = net()
    x = torch.randn(4, 3, 12, 12)
    explainer = Explainer(model, DEFAULT_METHODS, "conv2")
    untuned = Explainer(model, DEFAULT_METHODS, "conv2", tune=False).explain(x)
    runner, _ = explainer._runner()  # the BatchNorm-folded copy the passes run
    assert runner is not model and not any(isinstance(m, nn.BatchNorm2d) for m in runner.modules())
    counter = Counter(runner)
    results = [explainer.explain(x) for _ in range(4)]
    assert explainer._runner()[0] is runner  # kept while the parameters do not change
    assert Explainer(model, ["gradcam"], "conv2")._runner()[0] is runner  # shared by the explainers of that layer
    tuner = tuning.tuner_for(runner, "gradient:" + ",".join(explainer.plan()), x)
    # batches 1, 2, 4 in NCHW and channels-last, the first chunk a warm-up
    assert set(tuner.seconds_per_item) == set(tuning.candidates(4, (torch.contiguous_format, torch.channels_last)))
    best = tuner.best(4)
    assert counter.forwards > 4  # the trials ran in chunks
    # every execution measured: a further call runs all of it at the best one (which of
    # them is fastest depends on the machine's timing; how the call is chunked does not)
    counter.forwards = 0
    results.append(explainer.explain(x))
    assert counter.forwards == 4 // best.batch and tuner.best(4) == best
    for r in results:  # every chunking gives the same maps, to float rounding
        for method in DEFAULT_METHODS:
            torch.testing.assert_close(r.maps[method], untuned.maps[method], rtol=1e-4, atol=1e-5, msg=method)
            assert r.maps[method].is_contiguous()
        assert torch.equal(r.target, untuned.target)
    assert all(p.is_contiguous() for p in (*model.parameters(), *runner.parameters()))  # layouts restored


def test_tuned_occlusion_equals_the_exact_batching():
    model = net()
    x = torch.randn(2, 3, 12, 12)
    o = {"occlusion": {"window": (3, 4, 4), "strides": (3, 2, 2), "perturbations_per_eval": 8}}
    want = Explainer(model, ["occlusion"], options=o, tune=False).explain(x).maps["occlusion"]
    for _ in range(3):
        got = Explainer(model, ["occlusion"], options=o).explain(x).maps["occlusion"]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_the_job_describes_exactly_the_planner_methods():
    from interp_ext import engine, registry
    assert set(registry.METHODS) == set(engine.METHODS) and registry.DEFAULT_METHODS == engine.DEFAULT_METHODS
    assert {m for m, d in registry.METHODS.items() if d.needs_layer} == set(engine.LAYER_METHODS)


def test_tuning_measurements_persist_for_the_next_process(monkeypatch, tmp_path):
    from interp_ext import tuning
    monkeypatch.setenv("INTERP_EXT_CACHE", str(tmp_path / "cache"))
    model = net()
    x = torch.randn(4, 3, 12, 12)
    explainer = Explainer(model, DEFAULT_METHODS, "conv2")
    for _ in range(4):
        explainer.explain(x)
    kind = "gradient:" + ",".join(explainer.plan())
    measured = dict(tuning.tuner_for(model, kind, x).seconds_per_item)
    assert (tmp_path / "cache" / "tuning.json").is_file()
    tuning._TUNERS.clear()  # a new process: the same architecture, other weights
    other = net()
    with torch.no_grad():
        other.conv1.weight.mul_(2)
    fresh = tuning.tuner_for(other, kind, x)
    assert fresh.seconds_per_item == measured and fresh.next(4) == fresh.best(4)  # no trials
    assert tuning.tuner_for(other, kind, torch.randn(4, 3, 16, 16)).seconds_per_item == {}  # another input size

    tuning._TUNERS.clear()
    (tmp_path / "cache" / "tuning.json").write_text("{not json")
    assert tuning.tuner_for(other, kind, x).seconds_per_item == {}  # a broken cache costs only trials
    tuning._TUNERS.clear()
    monkeypatch.setenv("INTERP_EXT_CACHE", "off")
    (tmp_path / "cache" / "tuning.json").unlink()
    for _ in range(4):
        Explainer(other, DEFAULT_METHODS, "conv2").explain(x)
    assert not (tmp_path / "cache" / "tuning.json").exists()


def test_folded_copy_follows_the_model_and_leaves_target_layers_whole():
    from interp_ext.fusion import fold_batchnorm
    model = net()
    x = torch.randn(2, 3, 12, 12)
    folded, count = fold_batchnorm(model)
    assert count == 1 and isinstance(model.bn, nn.BatchNorm2d)  # the model itself unchanged
    assert folded.folded_from is type(model)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-6)
    assert fold_batchnorm(model, keep=["conv1"]) is None  # the CAM layer's output must stay the conv's
    explainer = Explainer(model, ["gradcam", "saliency"], "conv2")
    first = explainer.explain(x)
    with torch.no_grad():
        model.conv1.weight.mul_(-1)  # an optimiser step, say: the folded copy is made again
    second = explainer.explain(x)
    want = Explainer(model, ["gradcam", "saliency"], "conv2", tune=False).explain(x)
    torch.testing.assert_close(second.maps["saliency"], want.maps["saliency"], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(first.maps["saliency"], second.maps["saliency"])
