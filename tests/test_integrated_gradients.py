"""interp_ext's own InputXGradient and IntegratedGradients: the numbers Captum gives, every
quadrature, chunked path batches equal to one batch, completeness, clear errors, eval mode."""
import pytest
import torch
from torch import nn

import interp_ext
from interp_ext import InputXGradient, IntegratedGradients

captum_attr = pytest.importorskip("captum.attr")


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


@pytest.fixture()
def data():
    torch.manual_seed(1)
    return _net(), torch.rand(3, 3, 10, 10)


@pytest.mark.parametrize("method, n_steps", [("gausslegendre", 20), ("riemann_trapezoid", 16), ("riemann_left", 8),
                                             ("riemann_middle", 8), ("riemann_right", 8)])
@pytest.mark.parametrize("target", [None, 2, [0, 4, 1]])
def test_integrated_gradients_equals_captum(data, method, n_steps, target):
    model, x = data
    baseline = torch.rand(1, 3, 10, 10)
    ours, delta = IntegratedGradients(model).attribute(x, target=target, baselines=baseline, n_steps=n_steps,
                                                       method=method, return_delta=True)
    want_target = target if target is not None else model(x).argmax(1)
    want, want_delta = captum_attr.IntegratedGradients(model).attribute(
        x, baselines=baseline.expand_as(x), target=want_target, n_steps=n_steps, method=method,
        return_convergence_delta=True)
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(delta, want_delta.to(delta.dtype), rtol=1e-4, atol=1e-5)


def test_path_batches_do_not_change_the_answer_and_bound_each_call(data):
    model, x = data
    sizes = []
    hook = model.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    whole = IntegratedGradients(model).attribute(x, target=1, n_steps=10)
    sizes.clear()
    chunked = IntegratedGradients(model).attribute(x, target=1, n_steps=10, batch_size=7)
    hook.remove()
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-7)
    assert max(sizes) <= 7 and sum(sizes) == 10 * 3  # 2 path points of 3 images per call


def test_completeness_with_many_steps(data):
    model, x = data
    _, delta = IntegratedGradients(model).attribute(x, n_steps=200, return_delta=True)
    assert delta.abs().max() < 1e-3


def test_input_x_gradient_equals_captum(data):
    model, x = data
    torch.testing.assert_close(InputXGradient(model).attribute(x, target=3),
                               captum_attr.InputXGradient(model).attribute(x, target=3), rtol=1e-5, atol=1e-7)


def test_bad_arguments_are_named_before_any_forward(data):
    model, x = data
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    ig = IntegratedGradients(model)
    for kwargs, words in [({"method": "simpson"}, "method must be one of"), ({"n_steps": 1, "method": "riemann_left"},
                          "n_steps must be at least 2"), ({"n_steps": 2.5}, "n_steps must be an int"),
                          ({"batch_size": 0}, "batch_size must be None or a positive int"),
                          ({"baselines": torch.zeros(2, 3, 10, 10)}, "baselines must broadcast"),
                          ({"baselines": "black"}, "baselines must be a number or a tensor")]:
        with pytest.raises((ValueError, TypeError), match=words):
            ig.attribute(x, **kwargs)
    with pytest.raises(ValueError, match="target must be in"):
        ig.attribute(x, target=9)
    assert len(calls) == 1  # only the out-of-range target reached a forward: its range needs the logits


def test_eval_mode_restored_and_exported(data):
    model, x = data
    model.train()
    IntegratedGradients(model).attribute(x, n_steps=4)
    assert model.training and all(m.training for m in model.modules())
    assert "IntegratedGradients" in interp_ext.__all__ and "InputXGradient" in interp_ext.__all__
