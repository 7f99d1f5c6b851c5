"""Input handling shared by every method that runs the model: what the model returns (a
tuple or dict is a clear TypeError), the inputs' dtype against the model's, unbatched
samples, NaN / inf inputs and baselines, SmoothGrad's arguments, and the model's
train / eval mode (the methods run in eval mode and restore every module's flag after,
also on an error). Bad inputs raise before the model is called, and leave it unchanged."""
import copy

import pytest
import torch
from torch import nn

from interp_ext import features, ops, visualize
from interp_ext.attr import (
    CAM,
    Deconvolution,
    GradCAM,
    GradCAMPlusPlus,
    GuidedBackprop,
    GuidedGradCAM,
    HiResCAM,
    LayerCAM,
    Occlusion,
    Saliency,
    ShapleySampling,
    SmoothGrad,
    XGradCAM,
    grid_feature_mask,
)

H = W = 6


class _Net(nn.Module):
    """A tiny CNN with BatchNorm and Dropout (train mode changes its output and its running
    statistics), a GAP + linear head (CAM works), that counts its forward passes and can
    return its logits inside a tuple or a dict."""

    def __init__(self, wrap=None):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5), nn.Dropout(0.5))
        self.wrap = wrap
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        y = self.head(self.features(x))
        if self.wrap == "tuple":
            return y, y
        if self.wrap == "dict":
            return {"logits": y}
        return y


LAYER = "features.2"

METHODS = {
    "saliency": lambda m, x: Saliency(m).attribute(x),
    "saliency_map": lambda m, x: Saliency(m).saliency_map(x),
    "guided_backprop": lambda m, x: GuidedBackprop(m).attribute(x),
    "deconvolution": lambda m, x: Deconvolution(m).attribute(x),
    "gradcam": lambda m, x: GradCAM(m, LAYER).attribute(x).maps,
    "gradcam++": lambda m, x: GradCAMPlusPlus(m, LAYER).attribute(x).maps,
    "xgradcam": lambda m, x: XGradCAM(m, LAYER).attribute(x).maps,
    "layercam": lambda m, x: LayerCAM(m, LAYER).attribute(x).maps,
    "hirescam": lambda m, x: HiResCAM(m, LAYER).attribute(x).maps,
    "cam": lambda m, x: CAM(m, LAYER, "head.2").attribute(x).maps,
    "guided_gradcam": lambda m, x: GuidedGradCAM(m, LAYER).attribute(x),
    "smoothgrad": lambda m, x: SmoothGrad(Saliency(m), n_samples=2, batch_size=4, seed=0).attribute(x),
    "occlusion": lambda m, x: Occlusion(m).attribute(x, (3, 3), strides=3),
    "shapley": lambda m, x: ShapleySampling(m).attribute(x, grid_feature_mask(H, W, 3), n_samples=2, seed=0),
}
method_params = pytest.mark.parametrize("method", list(METHODS), ids=list(METHODS))


def _images(n=2, dtype=torch.float32):
    return torch.rand(n, 3, H, W, generator=torch.Generator().manual_seed(1)).to(dtype)


def _state(model):
    """Everything a call could change: parameters and buffers (BatchNorm statistics and
    their counter) and every module's training flag."""
    return copy.deepcopy(model.state_dict()), [(name, m.training) for name, m in model.named_modules()]


def _assert_unchanged(model, before):
    state, flags = before
    after_state, after_flags = _state(model)
    assert after_flags == flags
    assert after_state.keys() == state.keys()
    for k in state:
        assert torch.equal(after_state[k], state[k]), k


@method_params
@pytest.mark.parametrize("wrap", ["tuple", "dict"])
def test_model_returning_a_tuple_or_dict_is_a_clear_type_error(method, wrap):
    model = _Net(wrap).eval()
    before = _state(model)
    with pytest.raises(TypeError, match=f"the model must return a tensor of scores.*got {wrap}"):
        METHODS[method](model, _images())
    _assert_unchanged(model, before)


@method_params
@pytest.mark.parametrize("model_dtype, input_dtype", [(torch.float64, torch.float32), (torch.float32, torch.float64)])
def test_inputs_in_another_dtype_than_the_model_raise_before_any_forward(method, model_dtype, input_dtype):
    model = _Net().to(model_dtype).eval()
    before = _state(model)
    with pytest.raises(TypeError, match=rf"inputs must have the model's dtype {model_dtype}, got {input_dtype}"):
        METHODS[method](model, _images(dtype=input_dtype))
    assert model.calls == 0
    _assert_unchanged(model, before)


@method_params
def test_an_unbatched_image_raises_before_any_forward(method):
    model = _Net().eval()
    before = _state(model)
    with pytest.raises(ValueError, match=r"inputs must be batched.*\(3, 6, 6\).*inputs\[None\]"):
        METHODS[method](model, _images(1)[0])
    assert model.calls == 0
    _assert_unchanged(model, before)


@method_params
@pytest.mark.parametrize("value, word", [(float("nan"), "NaN"), (float("inf"), "inf"), (-float("inf"), "inf")])
def test_non_finite_inputs_raise_before_any_forward(method, value, word):
    model = _Net().eval()
    before = _state(model)
    x = _images()
    x[1, 2, 3, 4] = value
    with pytest.raises(ValueError, match=rf"inputs contains {word}\b"):
        METHODS[method](model, x)
    assert model.calls == 0
    _assert_unchanged(model, before)


def test_nan_and_inf_inputs_are_both_named():
    x = _images()
    x[0, 0, 0, 0], x[1, 0, 0, 0] = float("nan"), float("inf")
    with pytest.raises(ValueError, match="inputs contains NaN and inf"):
        Saliency(_Net().eval()).attribute(x)


def _with_mixed_flags(model):
    """Train mode, except one submodule in eval mode: restoring must keep exactly that."""
    model.train()
    model.head[3].eval()
    return model


@method_params
def test_a_model_in_train_mode_runs_in_eval_mode_and_gets_its_flags_back(method):
    x = _images()
    want = METHODS[method](_Net().eval(), x)
    model = _with_mixed_flags(_Net())
    before = _state(model)
    got = METHODS[method](model, x)
    torch.testing.assert_close(got, want)  # eval-mode numbers: no Dropout, BatchNorm's running statistics
    _assert_unchanged(model, before)  # running statistics not updated, every flag as it was
    assert model.calls > 0


@method_params
def test_the_model_mode_is_restored_after_an_error_in_the_forward(method):
    model = _with_mixed_flags(_Net("tuple"))
    before = _state(model)
    with pytest.raises(TypeError):
        METHODS[method](model, _images())
    assert model.calls > 0
    _assert_unchanged(model, before)


@pytest.mark.parametrize("method", ["occlusion", "shapley"])
@pytest.mark.parametrize("baselines", [float("nan"), float("inf"), -float("inf"),
                                       torch.tensor(float("inf")), torch.tensor([0.0, float("inf"), 0.0])])
def test_non_finite_baselines_raise_before_any_forward(method, baselines):
    model = _Net().eval()
    before = _state(model)
    run = {
        "occlusion": lambda: Occlusion(model).attribute(_images(), (3, 3), strides=3, baselines=baselines),
        "shapley": lambda: ShapleySampling(model).attribute(_images(), grid_feature_mask(H, W, 3), n_samples=2,
                                                             baselines=baselines),
    }[method]
    with pytest.raises(ValueError, match=r"baselines contains (NaN|inf)"):
        run()
    assert model.calls == 0
    _assert_unchanged(model, before)


@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, HiResCAM])
def test_smoothgrad_refuses_cam_methods_at_construction(cls):
    model = _Net().eval()
    with pytest.raises(TypeError, match=rf"method: SmoothGrad averages input-shaped attributions.*Saliency.*got {cls.__name__}"):
        SmoothGrad(cls(model, LAYER))
    with pytest.raises(TypeError, match="method: .*got CAM"):
        SmoothGrad(CAM(model, LAYER, "head.2"))
    assert model.calls == 0


def test_smoothgrad_refuses_a_method_that_does_not_return_an_input_shaped_tensor():
    class Odd:
        def __init__(self, model):
            self.model = model

        def attribute(self, inputs, target=None):
            self.model(inputs)
            return inputs.sum()

    model = _Net().eval()
    with pytest.raises(TypeError, match=r"method: Odd.attribute must return a tensor of the inputs' shape \(2, 3, 6, 6\), got \(\)"):
        SmoothGrad(Odd(model), n_samples=1).attribute(_images())


@pytest.mark.parametrize("stdev", [float("inf"), -float("inf"), float("nan"), -0.1, "0.1", True])
def test_smoothgrad_stdev_must_be_a_finite_number_at_least_zero(stdev):
    with pytest.raises(ValueError, match="stdev must be a finite number >= 0"):
        SmoothGrad(Saliency(_Net()), stdev=stdev)


@pytest.mark.parametrize("n_samples", [True, 0, 2.0])
def test_smoothgrad_n_samples_must_be_a_positive_int(n_samples):
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        SmoothGrad(Saliency(_Net()), n_samples=n_samples)


def test_smoothgrad_of_smoothgrad_is_accepted():
    model = _Net().eval()
    inner = SmoothGrad(Saliency(model), n_samples=2, seed=0)
    assert SmoothGrad(inner, n_samples=2, seed=1).attribute(_images()).shape == (2, 3, H, W)


@pytest.mark.parametrize("kernel_size", [3.0, (3.0, 3), (3, 3.5), "3", torch.tensor(3), [3, 3, 3], True])
def test_gaussian_blur_kernel_size_must_be_ints(kernel_size):
    with pytest.raises(ValueError, match=r"kernel_size must be a positive int or \(k_h, k_w\) of ints"):
        ops.gaussian_blur(torch.rand(1, 3, 8, 8), 1.0, kernel_size)


def test_gaussian_blur_takes_int_kernel_sizes_as_list_or_tuple():
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(ops.gaussian_blur(x, 1.0, [3, 5]), ops.gaussian_blur(x, 1.0, (3, 5)))


# --- visualize/ and features/: the same mode rule -------------------------------------------

_PIX = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))

MODEL_RUNNERS = {
    "fgsm": lambda m: visualize.fgsm(m, _PIX, 0, 0.01),
    "pgd": lambda m: visualize.pgd(m, _PIX, 0, 0.01, steps=2),
    "fooling_image": lambda m: visualize.fooling_image(m, _PIX, 1, max_steps=2),
    "fooling_rate": lambda m: visualize.fooling_rate(m, _PIX, torch.zeros(3, 16, 16)),
    "universal_perturbation": lambda m: visualize.universal_perturbation(m, _PIX, max_passes=1, candidates=2,
                                                                          deepfool_steps=1),
    "class_visualization": lambda m: visualize.class_visualization(m, [0], steps=2, image_size=16),
    "class_visualization_layer": lambda m: visualize.class_visualization(m, layer=LAYER, channel=0, steps=2,
                                                                          image_size=16),
    "deep_dream": lambda m: visualize.deep_dream(m, _PIX[0], LAYER, steps=1, octaves=1),
    "invert_features": lambda m: visualize.invert_features(m, _PIX, LAYER, steps=2),
    "capture": lambda m: features.capture(m, LAYER, _PIX),
    "extract_features": lambda m: features.extract_features(m, LAYER, list(_PIX), batch_size=1),
    "receptive_field": lambda m: features.receptive_field(m, LAYER, 16),  # (past the BatchNorm: the pass stops at the layer)
    "top_activating_patches": lambda m: features.top_activating_patches(m, LAYER, 0, list(_PIX), k=1),
    "tcav": lambda m: features.TCAV(m, LAYER).interpret(_PIX, 0, _PIX, [_PIX, _PIX.flip(0)]),
}


@pytest.mark.parametrize("runner", list(MODEL_RUNNERS), ids=list(MODEL_RUNNERS))
def test_visualize_and_features_run_in_eval_mode_and_restore_the_flags(runner):
    model = _with_mixed_flags(_Net())
    before = _state(model)
    seen = []
    hook = model.features[1].register_forward_pre_hook(lambda mod, args: seen.append(mod.training))
    try:
        MODEL_RUNNERS[runner](model)
    finally:
        hook.remove()
    assert seen and not any(seen)  # BatchNorm ran in eval mode at every call
    _assert_unchanged(model, before)


def test_visualize_restores_the_flags_after_an_error():
    model = _with_mixed_flags(_Net())
    before = _state(model)
    with pytest.raises(ValueError, match="labels"):
        visualize.fgsm(model, _PIX, 99, 0.01)  # out of range: found on the first forward
    _assert_unchanged(model, before)


def test_the_model_can_be_given_by_name():
    model = _with_mixed_flags(_Net())
    before = _state(model)
    out = visualize.fgsm(model=model, images=_PIX, labels=0, epsilon=0.01)
    assert out.shape == _PIX.shape
    assert features.capture(model=model, layers=LAYER, inputs=_PIX)[LAYER].shape == (2, 4, 16, 16)
    _assert_unchanged(model, before)
