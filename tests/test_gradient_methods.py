"""Saliency, GuidedBackprop and Deconvolution against hand-written references and Captum."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from interp_ext import Deconvolution, GuidedBackprop, Saliency, reference


class RuleRef(torch.autograd.Function):
    """Hand-written rectifier with the guided / deconvnet backward, in pure PyTorch."""

    @staticmethod
    def forward(ctx, x, upper, rule):
        ctx.save_for_backward(x)
        ctx.upper, ctx.rule = upper, rule
        return x.clamp(0, upper) if upper is not None else x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return reference.guided_relu_backward(g, x, ctx.upper, ctx.rule), None, None


# name -> (factory of an activation callable, upper bound of that rectifier)
SPELLINGS = {
    "nn.ReLU": (lambda: nn.ReLU(), None),
    "nn.ReLU(inplace)": (lambda: nn.ReLU(inplace=True), None),
    "F.relu": (lambda: F.relu, None),
    "F.relu(inplace)": (lambda: (lambda t: F.relu(t, inplace=True)), None),
    "torch.relu": (lambda: torch.relu, None),
    "torch.relu_": (lambda: (lambda t: (torch.relu_(t), t)[1]), None),  # ignores the return value
    "Tensor.relu": (lambda: (lambda t: t.relu()), None),
    "Tensor.relu_": (lambda: (lambda t: (t.relu_(), t)[1]), None),
    "nn.ReLU6": (lambda: nn.ReLU6(), 6.0),
    "nn.ReLU6(inplace)": (lambda: nn.ReLU6(inplace=True), 6.0),
    "F.relu6": (lambda: F.relu6, 6.0),
    "F.hardtanh(0,6)": (lambda: (lambda t: F.hardtanh(t, 0.0, 6.0)), 6.0),
    "nn.Hardtanh(0,6)": (lambda: nn.Hardtanh(0.0, 6.0), 6.0),
}


class SmallNet(nn.Module):
    """Conv net that applies one activation object three times (reuse included)."""

    def __init__(self, act):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 5)
        self.act = act
        with torch.no_grad():  # big enough that ReLU6's upper bound is reached
            for m in (self.conv1, self.conv2, self.fc1):
                m.weight.mul_(4)

    def forward(self, x):
        x = self.act(self.conv1(x))
        x = F.max_pool2d(self.act(self.conv2(x)), 2)
        return self.fc2(self.act(self.fc1(x.flatten(1))))


def reference_attribution(model, x, target, upper, rule):
    ref = SmallNet(lambda t: RuleRef.apply(t, upper, rule)).to(x.dtype)
    ref.load_state_dict(model.state_dict())
    xr = x.clone().requires_grad_()
    out = ref(xr)
    (g,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), xr)
    return g


def hooks_of(model):
    return [
        (name, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), len(getattr(m, "_backward_pre_hooks", {})))
        for name, m in model.named_modules()
    ]


@pytest.mark.parametrize("spelling", list(SPELLINGS))
@pytest.mark.parametrize("method_cls, rule", [(GuidedBackprop, "guided"), (Deconvolution, "deconvnet")])
def test_every_rectifier_spelling(spelling, method_cls, rule):
    make_act, upper = SPELLINGS[spelling]
    model = SmallNet(make_act()).double().eval()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([0, 3, 1, 4])
    modules_before = [(n, type(m)) for n, m in model.named_modules()]
    hooks_before = hooks_of(model)
    state_before = {k: v.clone() for k, v in model.state_dict().items()}

    got = method_cls(model).attribute(x, target=target)

    want = reference_attribution(model, x, target, upper, rule)
    torch.testing.assert_close(got, want)
    # The rule matters: plain gradients are different.
    plain = Saliency(model).attribute(x, target=target, abs=False)
    assert not torch.allclose(got, plain)
    # The model is exactly as before.
    assert [(n, type(m)) for n, m in model.named_modules()] == modules_before
    assert hooks_of(model) == hooks_before
    assert all(torch.equal(v, state_before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_one_forward_serves_plain_guided_and_deconvnet_backward_passes(spelling):
    # RectifierMode(BackwardRule()): each rectifier reads the rule when the gradient arrives
    from interp_ext.attr.rectifiers import BackwardRule, RectifierMode

    make_act, upper = SPELLINGS[spelling]
    model = SmallNet(make_act()).double().eval()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([0, 3, 1, 4])
    switch = BackwardRule()
    xr = x.clone().requires_grad_()
    with RectifierMode(switch):
        score = model(xr).gather(1, target[:, None]).sum()
    got = {}
    for rule in ("plain", "guided", "deconvnet", "plain"):
        switch.rule = rule
        (got[rule],) = torch.autograd.grad(score, xr, retain_graph=True)
    torch.testing.assert_close(got["plain"], Saliency(model).attribute(x, target=target, abs=False), rtol=0, atol=0)
    torch.testing.assert_close(got["guided"], reference_attribution(model, x, target, upper, "guided"))
    torch.testing.assert_close(got["deconvnet"], reference_attribution(model, x, target, upper, "deconvnet"))
    with pytest.raises(ValueError, match="rule must be"):
        switch.rule = "relu"


def test_relu6_bound_is_exercised():
    model = SmallNet(nn.ReLU6()).double()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    pre = model.conv2(F.relu6(model.conv1(x)))
    assert (model.conv1(x) > 6).any() and (pre > 6).float().mean() > 0.02  # otherwise the ReLU6 cases test nothing new


def test_state_restored_after_exception():
    class Boom(nn.Module):
        def forward(self, x):
            x = F.relu(x)
            raise RuntimeError("boom inside the model")

    with pytest.raises(RuntimeError, match="boom inside the model"):
        GuidedBackprop(Boom()).attribute(torch.randn(2, 3))
    assert torch._C._len_torch_function_stack() == 0
    x = torch.randn(10, requires_grad=True)
    (g,) = torch.autograd.grad((F.relu(x) * -1).sum(), x)
    torch.testing.assert_close(g, -(x > 0).float())  # plain ReLU gradient again, not guided


def test_guided_backprop_equals_captum_on_resnet18():
    captum = pytest.importorskip("captum.attr")
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None).eval()
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in model.modules())
    x = torch.randn(3, 3, 64, 64)
    target = [1, 500, 999]
    ours = GuidedBackprop(model).attribute(x, target=target)
    theirs = captum.GuidedBackprop(model).attribute(x.clone(), target=target)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    ours_d = Deconvolution(model).attribute(x, target=target)
    theirs_d = captum.Deconvolution(model).attribute(x.clone(), target=target)
    torch.testing.assert_close(ours_d, theirs_d, rtol=1e-4, atol=1e-6)
    assert all(len(m._forward_hooks) == 0 and len(m._backward_hooks) == 0 for m in model.modules())


def test_saliency_equals_autograd_and_captum():
    captum = pytest.importorskip("captum.attr")
    model = SmallNet(nn.ReLU()).eval()
    x = torch.randn(3, 3, 8, 8)
    target = torch.tensor([2, 0, 4])
    xr = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(model(xr).gather(1, target[:, None]).sum(), xr)
    torch.testing.assert_close(Saliency(model).attribute(x, target=target, abs=False), g)
    torch.testing.assert_close(Saliency(model).attribute(x, target=target), g.abs())
    torch.testing.assert_close(Saliency(model).attribute(x, target=target), captum.Saliency(model).attribute(x, target=target))
    torch.testing.assert_close(Saliency(model).saliency_map(x, target=target), g.abs().amax(dim=1))


def test_target_forms_agree():
    model = SmallNet(nn.ReLU()).eval()
    x = torch.randn(3, 3, 8, 8)
    top1 = model(x).argmax(1)
    sal = Saliency(model)
    by_tensor = sal.attribute(x, target=top1)
    torch.testing.assert_close(sal.attribute(x, target=None), by_tensor)
    torch.testing.assert_close(sal.attribute(x, target=top1.tolist()), by_tensor)
    torch.testing.assert_close(sal.attribute(x, target=2), sal.attribute(x, target=[2, 2, 2]))


class CountingModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        self.calls += 1
        return self.fc(x)


@pytest.mark.parametrize(
    "inputs, target, exc, match",
    [
        (torch.randn(2, 4), [1], ValueError, "one int class per sample"),
        (torch.randn(2, 4), torch.tensor([0.0, 1.0]), TypeError, "integer tensor"),
        (torch.randn(2, 4), torch.tensor([0, 1, 2]), ValueError, r"shape \(2,\)"),
        (torch.randn(2, 4), "cat", TypeError, "target must be"),
        (torch.tensor([[1.0, float("nan"), 0, 0]]), 0, ValueError, "inputs contains NaN"),
        (torch.ones(2, 4, dtype=torch.long), 0, TypeError, "inputs must be a floating-point"),
        (torch.randn(4), 0, ValueError, "batched"),
    ],
)
def test_bad_arguments_fail_before_the_model_runs(inputs, target, exc, match):
    model = CountingModel()
    for method in (Saliency(model), GuidedBackprop(model)):
        with pytest.raises(exc, match=match):
            method.attribute(inputs, target=target)
    assert model.calls == 0


def test_target_out_of_range():
    model = CountingModel()
    with pytest.raises(ValueError, match=r"target must be in \[0, 3\)"):
        GuidedBackprop(model).attribute(torch.randn(2, 4), target=[0, 3])
