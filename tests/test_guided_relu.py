"""The guided_relu op family against interp_ext.reference."""
import pytest
import torch
from torch.library import opcheck

import interp_ext
from interp_ext import ops, reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
RULES = ["guided", "deconvnet"]
UPPERS = [None, 6.0]
SHAPES = [(1,), (7,), (3, 1023), (2, 3, 17, 33), (4, 64, 28, 28)]


def sample(shape, dtype, device="cpu"):
    # Spread beyond 6 so the ReLU6 bound matters; exact zeros and sixes hit the edges.
    x = (torch.randn(shape, dtype=torch.float64) * 4).to(dtype).to(device)
    g = torch.randn(shape, dtype=torch.float64).to(dtype).to(device)
    flat = x.view(-1)
    flat[::11] = 0
    flat[5::13] = 6
    return g, x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("upper", UPPERS)
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_reference(dtype, rule, upper, shape):
    g, x = sample(shape, dtype)
    got = ops.guided_relu_backward(g, x, upper, rule)
    # The result is either g or 0, so every dtype must match exactly.
    want = reference.guided_relu_backward(g.double(), x.double(), upper, rule).to(dtype)
    assert got.dtype == dtype and got.shape == g.shape
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda)])
@pytest.mark.parametrize("dtype, upper", [(torch.bfloat16, 3.3), (torch.float16, 0.1), (torch.bfloat16, 0.1),
                                          (torch.float16, 3.3)])
def test_saturated_units_pass_no_gradient_when_upper_rounds_in_the_dtype(device, dtype, upper):
    # The forward clamps to upper as the dtype holds it (bfloat16 3.3 -> 3.296875); the
    # backward compared with the exact 3.3 and let saturated units through.
    want = [0.0, 0.0, 1.0, 0.0]
    x = torch.tensor([7 * upper, 3 * upper, upper * 0.5, -1.0], dtype=dtype, device=device, requires_grad=True)
    ops.guided_relu(x, upper=upper).sum().backward()
    assert x.grad.tolist() == want
    y = ops.guided_relu(x.detach(), upper=upper)
    assert ops.guided_relu_backward(torch.ones_like(y), y, upper).tolist() == want  # given the output
    assert reference.guided_relu_backward(torch.ones_like(y), y, upper).tolist() == want
    assert reference.guided_relu_backward(torch.ones_like(y), x.detach(), upper).tolist() == want
    z = x.detach().clone().requires_grad_()
    w = z.clone()
    ops.guided_relu_(w, upper=upper)
    w.sum().backward()
    assert z.grad.tolist() == want


def test_backward_uses_every_condition():
    g = torch.tensor([1.0, 1.0, -1.0, 1.0, 1.0])
    x = torch.tensor([1.0, -1.0, 1.0, 7.0, 0.0])
    assert ops.guided_relu_backward(g, x).tolist() == [1, 0, 0, 1, 0]
    assert ops.guided_relu_backward(g, x, 6.0).tolist() == [1, 0, 0, 0, 0]
    assert ops.guided_relu_backward(g, x, 6.0, "deconvnet").tolist() == [1, 1, 0, 1, 1]


@pytest.mark.parametrize("rule", RULES)
def test_non_contiguous_inputs(rule):
    g, x = sample((8, 6, 10, 12), torch.float32)
    pairs = [
        (g.permute(0, 3, 2, 1), x.permute(0, 3, 2, 1)),  # transposed
        (g[:, ::2, 1::3], x[:, 1::2, 1::3]),  # strided slices
        (g.permute(0, 3, 2, 1), x.permute(0, 3, 2, 1).contiguous()),  # mixed layouts
    ]
    for gs, xs in pairs:
        assert not gs.is_contiguous()
        got = ops.guided_relu_backward(gs, xs, 6.0, rule)
        torch.testing.assert_close(got, reference.guided_relu_backward(gs, xs, 6.0, rule), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty(dtype):
    e = torch.empty(0, 3, dtype=dtype)
    assert ops.guided_relu_backward(e, e).shape == (0, 3)
    assert ops.guided_relu(e).shape == (0, 3)
    out = torch.empty(0, 3, dtype=dtype)
    assert ops.guided_relu_backward(e, e, out=out) is out


@pytest.mark.parametrize("upper", UPPERS)
def test_out_variant(upper):
    g, x = sample((5, 7, 9), torch.float32)
    want = reference.guided_relu_backward(g, x, upper)
    out = torch.full_like(g, float("nan"))  # poisoned: every element must be written
    res = ops.guided_relu_backward(g, x, upper, out=out)
    assert res is out
    torch.testing.assert_close(out, want)
    # in place into grad_output, and into a non-contiguous buffer
    g_copy = g.clone()
    ops.guided_relu_backward(g_copy, x, upper, out=g_copy)
    torch.testing.assert_close(g_copy, want)
    big = torch.full((9, 7, 5), float("nan"))
    strided = big.permute(2, 1, 0)
    ops.guided_relu_backward(g, x, upper, out=strided)
    torch.testing.assert_close(strided, want)


def test_forward_values():
    x = torch.randn(100, dtype=torch.float64) * 5
    torch.testing.assert_close(ops.guided_relu(x), torch.relu(x))
    torch.testing.assert_close(ops.guided_relu(x, 6.0), torch.clamp(x, 0, 6))
    torch.testing.assert_close(ops.guided_relu(x, 6.0, "deconvnet"), torch.clamp(x, 0, 6))


@pytest.mark.parametrize("upper", UPPERS)
def test_autograd_applies_rule(upper):
    x = (torch.randn(50, dtype=torch.float64) * 4).requires_grad_()
    g = torch.randn(50, dtype=torch.float64)
    for rule in RULES:
        (got,) = torch.autograd.grad(ops.guided_relu(x, upper, rule), x, g)
        torch.testing.assert_close(got, reference.guided_relu_backward(g, x.detach(), upper, rule))


@pytest.mark.parametrize("upper", UPPERS)
def test_gradcheck(upper):
    # Away from the kinks at 0 and 6. gradcheck probes with one-hot (non-negative)
    # grad_outputs, where the guided rule equals the true Jacobian of the rectifier.
    x = torch.randn(4, 5, dtype=torch.float64) * 4
    x = torch.where((x.abs() < 0.1) | ((x - 6).abs() < 0.1), x + 0.3, x).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ops.guided_relu(t, upper), (x,), fast_mode=False)


def test_opcheck():
    x = torch.randn(3, 4, 5) * 4
    g = torch.randn(3, 4, 5)
    opcheck(torch.ops.interp_ext.guided_relu.default, (x.requires_grad_(), None, "guided"))
    opcheck(torch.ops.interp_ext.guided_relu.default, (x, 6.0, "deconvnet"))
    opcheck(torch.ops.interp_ext.guided_relu_backward.default, (g, x.detach(), 6.0, "guided"))
    opcheck(torch.ops.interp_ext.guided_relu_backward.out, (g, x.detach(), None, "guided"), {"out": torch.empty_like(g)})


def test_torch_compile_fullgraph():
    w = torch.randn(6, 6)

    def f(x):
        return (ops.guided_relu(x @ w, 6.0) * torch.linspace(-1, 1, 6)).sum()

    x = torch.randn(5, 6, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    y_eager = f(x)
    (g_eager,) = torch.autograd.grad(y_eager, x)
    y_comp = compiled(x)
    (g_comp,) = torch.autograd.grad(y_comp, x)
    torch.testing.assert_close(y_comp, y_eager)
    torch.testing.assert_close(g_comp, g_eager)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ops.guided_relu_backward(torch.ones(3, dtype=torch.int64), torch.ones(3)), "grad_output must be a floating"),
        (lambda: ops.guided_relu_backward(torch.ones(3), torch.ones(4)), "same shape"),
        (lambda: ops.guided_relu_backward(torch.ones(3), torch.ones(3, dtype=torch.float64)), "same dtype"),
        (lambda: ops.guided_relu_backward(torch.ones(3), torch.ones(3), rule="smooth"), 'rule must be "guided" or "deconvnet"'),
        (lambda: ops.guided_relu_backward(torch.ones(3), torch.ones(3), upper=-1.0), "upper must be positive"),
        (lambda: ops.guided_relu_backward(torch.ones(3), torch.ones(3), out=torch.empty(4)), "out must have shape"),
        (lambda: ops.guided_relu_backward(torch.ones(3), torch.ones(3), out=torch.empty(3, dtype=torch.float64)), "out must have dtype"),
        (lambda: ops.guided_relu(torch.ones(3, dtype=torch.int32)), "x must be a floating"),
        (lambda: ops.guided_relu(torch.ones(3), rule="nope"), "rule must be"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


def test_partial_overlap_rejected():
    buf = torch.randn(10)
    with pytest.raises(RuntimeError, match="single memory location"):
        ops.guided_relu_backward(buf[:8], buf[:8].clone(), out=buf[2:])


def test_fake_kernels_repeat_the_checks():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        g, x = torch.empty(3, 4), torch.empty(3, 5)
        with pytest.raises(RuntimeError, match="same shape"):
            torch.ops.interp_ext.guided_relu_backward(g, x)
        assert torch.ops.interp_ext.saliency_reduce(torch.empty(2, 3, 4, 5)).shape == (2, 4, 5)


def test_build_info():
    info = interp_ext.build_info()
    assert set(info) == {"version", "torch", "cuda_compiled", "cuda_version", "ops"}
    assert info["version"] == interp_ext.__version__
    assert info["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert {"guided_relu", "guided_relu_backward", "guided_relu_backward.out", "saliency_reduce"} <= set(info["ops"])
    assert (info["cuda_version"] is None) == (not info["cuda_compiled"])


@pytest.mark.parametrize("upper", UPPERS)
@pytest.mark.parametrize("rule", RULES)
def test_inplace_variant(upper, rule):
    a = (torch.randn(6, 9, dtype=torch.float64) * 4).requires_grad_()
    x = a * 1.0
    before = x.detach().clone()
    version = x._version
    assert ops.guided_relu_(x, upper, rule) is x
    assert x._version > version  # autograd knows x was written
    torch.testing.assert_close(x.detach(), ops.guided_relu(before, upper))
    g = torch.randn(6, 9, dtype=torch.float64)
    (grad,) = torch.autograd.grad(x, a, g)
    torch.testing.assert_close(grad, reference.guided_relu_backward(g, before, upper, rule))


def test_inplace_variant_on_a_view_and_without_grad():
    base = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    y = base * 2
    ops.guided_relu_(y[:, 1:3])
    g = torch.randn(4, 6, dtype=torch.float64)
    (grad,) = torch.autograd.grad(y, base, g)
    want = 2 * g.clone()
    pre = (base * 2).detach()[:, 1:3]
    want[:, 1:3] = 2 * reference.guided_relu_backward(g[:, 1:3], pre)
    torch.testing.assert_close(grad, want)
    plain = torch.randn(5) * 3
    expected = plain.clamp(0, 6)
    ops.guided_relu_(plain, 6.0)
    torch.testing.assert_close(plain, expected)


def test_inplace_variant_errors():
    leaf = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        ops.guided_relu_(leaf)
    with pytest.raises(RuntimeError, match="x must be a floating"):
        ops.guided_relu_(torch.ones(3, dtype=torch.int64))
    x = torch.randn(3)
    with pytest.raises(RuntimeError, match="rule must be"):
        ops.guided_relu_(x, rule="bogus")
    with pytest.raises(RuntimeError, match="upper must be positive"):
        ops.guided_relu_(x, upper=0.0)


def test_inplace_variant_opcheck():
    opcheck(torch.ops.interp_ext.guided_relu_.default, (torch.randn(3, 4) * 4, 6.0, "guided"), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda)])
def test_channels_last_stays_channels_last(device):
    # no copy in and none out for activations that share a dense layout
    g, x = sample((2, 5, 6, 7), torch.float32)
    g, x = g.to(device), x.to(device)
    gl, xl = (t.contiguous(memory_format=torch.channels_last) for t in (g, x))
    got = ops.guided_relu_backward(gl, xl, 6.0)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, reference.guided_relu_backward(g, x, 6.0))
    mixed = ops.guided_relu_backward(gl, x, 6.0)  # different layouts: through contiguous copies
    assert torch.equal(mixed, got)
    out = torch.empty_like(g)  # a contiguous out for channels-last inputs: written through a temporary
    ops.guided_relu_backward(gl, xl, 6.0, out=out)
    assert torch.equal(out, got)
