"""The model's graph, captured once, and what each node does to a changed region.

Tracing is ``torch.fx``; a submodule that does not trace becomes a leaf (its output is
computed in full, still exact) and only a model whose own ``forward`` does not trace is
refused. Each node gets a `Rule`:

- ``window``: a convolution or pooling; changes spread by its kernel, stride, padding
  and dilation, and a batch of patches runs it once with padding 0 on read boxes padded
  by `patch_splice` with ``fill``;
- ``pointwise``: element-wise (activations, eval-mode batch norm, arithmetic with
  constants), the region stays;
- ``shift``: constant zero/value padding, the region moves by (top, left);
- ``union``: element-wise on two or more changed inputs (residual add, gating) or a
  concatenation along channels: the union of their regions;
- ``full``: anything else (global pooling, flatten, linear, unknown ops and leaves): from
  here the copies are computed in full.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout2d,
)
_POINTWISE_FUNCTIONS = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.hardtanh, F.hardtanh_, F.leaky_relu, F.elu, F.selu, F.gelu,
    F.silu, F.mish, F.hardswish, F.hardsigmoid, F.softplus, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, torch.clamp,
    torch.clip, torch.neg, operator.neg, torch.abs, torch.exp, torch.square, torch.sqrt,
}
_ARITHMETIC = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub, operator.imul,
    operator.itruediv, torch.add, torch.sub, torch.mul, torch.div,
}
_POINTWISE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip", "neg",
                      "abs", "exp", "contiguous", "float", "double", "half", "bfloat16"}
_ARITHMETIC_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}


@dataclass(frozen=True)
class Rule:
    """How a batch of patches computes one node (see the module docstring)."""

    kind: str  # "input", "const", "window", "pointwise", "shift", "union", "full", "output"
    # window: per axis (kernel, stride, leading padding, dilation), fill value, and the
    # op applied to a batch of padded read boxes
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    fill: float = 0.0
    # window: the op on a batch of padded read boxes; its second argument resolves graph
    # nodes (a computed weight) to their values in the current clean run
    apply: Optional[Callable[[torch.Tensor, Callable[[Any], Any]], torch.Tensor]] = None
    shift: tuple[int, int] = (0, 0)  # shift: (top, left)
    macs: int = 1  # multiply-adds per output element (the FLOP model)
    why: str = ""  # full: the reason, for the plan's report


@dataclass
class Graph:
    """A traced model and, per node, whether it depends on the input."""

    module: fx.GraphModule
    nodes: list[fx.Node]
    dependent: set[fx.Node] = field(default_factory=set)
    leaves: tuple[str, ...] = ()  # submodules that did not trace


class _Tracer(fx.Tracer):
    def __init__(self, leaves: set[str]):
        super().__init__()
        self.extra_leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.extra_leaves or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module, leaves: set[str]) -> fx.GraphModule:
    tracer = _Tracer(leaves)
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _leaves_within(qual: str, leaves: set[str]) -> set[str]:
    """The leaves under submodule `qual`, named relative to it."""
    return {n[len(qual) + 1 :] for n in leaves if n.startswith(qual + ".")}


def _untraceable(model: nn.Module, prefix: str, leaves: set[str]) -> set[str]:
    """The smallest submodules of `model` that do not trace on their own."""
    found: set[str] = set()
    for name, child in model.named_children():
        qual = f"{prefix}{name}"
        if _Tracer(set()).is_leaf_module(child, qual):
            continue
        try:
            _Tracer(_leaves_within(qual, leaves | found)).trace(child)
        except Exception:
            inner = _untraceable(child, qual + ".", leaves | found)
            if inner:
                found |= inner
                try:  # does it trace with its failing parts as leaves?
                    _Tracer(_leaves_within(qual, leaves | found)).trace(child)
                    continue
                except Exception:
                    pass
            found.add(qual)
    return found


def capture(model: nn.Module) -> tuple[Optional[Graph], str]:
    """The model's graph, or None and the reason it cannot be captured."""
    leaves: set[str] = set()
    try:
        gm = _trace(model, leaves)
    except Exception as first:
        leaves = _untraceable(model, "", set())
        try:
            gm = _trace(model, leaves)
        except Exception:
            return None, f"torch.fx cannot trace {type(model).__name__}.forward ({type(first).__name__}: {first})"
    nodes = list(gm.graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return None, f"forward takes {len(inputs)} inputs; incremental occlusion plans one-input models"
    dependent: set[fx.Node] = set()
    for n in nodes:
        if n.op == "placeholder" or any(a in dependent for a in n.all_input_nodes):
            dependent.add(n)
    graph = Graph(gm, nodes, dependent, tuple(sorted(leaves)))
    reason = _aliasing(graph)
    if reason:
        return None, reason
    return graph, ""


def _mutates(node: fx.Node, module: fx.GraphModule) -> bool:
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    if node.op == "call_function":
        return node.kwargs.get("inplace", False) is True or node.target in (
            operator.iadd, operator.isub, operator.imul, operator.itruediv, F.relu_, torch.relu_, F.hardtanh_)
    if node.op == "call_module":
        return getattr(module.get_submodule(node.target), "inplace", False) is True
    return False


def _aliasing(graph: Graph) -> str:
    """An in-place op whose input is read again afterwards: the planned batch computes
    values, not storage, so such a model is refused."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for n in graph.nodes:
        if n in graph.dependent and _mutates(n, graph.module) and n.args and isinstance(n.args[0], fx.Node):
            src = n.args[0]
            if any(order[u] > order[n] for u in src.users):
                return f"{n.name} changes {src.name} in place and {src.name} is read again afterwards"
    return ""


# ---- rules ------------------------------------------------------------------------------

def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(v)
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _spatial_shape(value: Any) -> Optional[tuple[int, int]]:
    return tuple(value.shape[2:]) if isinstance(value, torch.Tensor) and value.dim() == 4 else None


def _conv_rule(weight, bias, shape, stride, padding, dilation, groups) -> Rule:
    """weight, bias: graph nodes, values, or (for a module) callables reading its
    current parameters; shape: the weight's."""
    k = tuple(shape[2:])
    s, d = _pair(stride), _pair(dilation)
    if isinstance(padding, str):
        if padding == "valid":
            p = (0, 0)
        else:  # "same" (stride 1): PyTorch puts the odd element of the total at the end
            p = tuple(di * (ki - 1) // 2 for di, ki in zip(d, k))
    else:
        p = _pair(padding)

    def apply(t: torch.Tensor, resolve) -> torch.Tensor:
        w = weight() if callable(weight) else resolve(weight)
        b = bias() if callable(bias) else resolve(bias)
        return F.conv2d(t, w, b, s, 0, d, groups)

    macs = shape[1] * k[0] * k[1]
    return Rule("window", k, s, p, d, 0.0, apply, macs=macs)


def _max_pool_rule(kernel, stride, padding, dilation) -> Rule:
    k = _pair(kernel)
    s = _pair(stride) if stride not in (None, [], ()) else k
    p, d = _pair(padding), _pair(dilation)
    return Rule("window", k, s, p, d, -math.inf, lambda t, _: F.max_pool2d(t, k, s, 0, d), macs=k[0] * k[1])


def _avg_pool_rule(kernel, stride, padding, ceil_mode, count_include_pad, divisor_override) -> Rule:
    k = _pair(kernel)
    s = _pair(stride) if stride not in (None, [], ()) else k
    p = _pair(padding)
    # padding read as zeros is what count_include_pad means; ceil_mode's border windows
    # and a divisor override divide differently
    if ceil_mode or divisor_override is not None or (not count_include_pad and p != (0, 0)):
        return Rule("full", why="avg_pool2d with ceil_mode, divisor_override or count_include_pad=False")
    return Rule("window", k, s, p, (1, 1), 0.0, lambda t, _: F.avg_pool2d(t, k, s, 0), macs=k[0] * k[1])


def _pad_rule(pad, mode, value) -> Rule:
    pad = tuple(pad)
    if mode != "constant" or len(pad) not in (2, 4) or any(v < 0 for v in pad):
        return Rule("full", why=f"pad {pad} mode {mode!r}")
    left, top = pad[0], (pad[2] if len(pad) == 4 else 0)
    return Rule("shift", shift=(top, left))


def _is_small_constant(value: Any) -> bool:
    """A constant that broadcasts over the spatial axes without reading them."""
    if not isinstance(value, torch.Tensor):
        return isinstance(value, (int, float, bool)) or value is None
    return value.dim() < 2 or (value.shape[-1] == 1 and value.shape[-2] == 1)


def _flat_args(node: fx.Node) -> list[Any]:
    out: list[Any] = []
    for a in (*node.args, *node.kwargs.values()):
        out.extend(a if isinstance(a, (list, tuple)) else [a])
    return out


def rule_of(node: fx.Node, graph: Graph, values: dict[fx.Node, Any]) -> Rule:
    """The rule of `node`, given the clean run's `values` (shapes and constants)."""
    if node.op == "placeholder":
        return Rule("input")
    if node.op == "output":
        return Rule("output")
    if node not in graph.dependent:
        return Rule("const")
    out_shape = _spatial_shape(values.get(node))
    if out_shape is None:
        return Rule("full", why="not an (N, C, H, W) map")
    dep = [a for a in _flat_args(node) if isinstance(a, fx.Node) and a in graph.dependent]
    consts = [values.get(a) if isinstance(a, fx.Node) else a for a in _flat_args(node) if not (isinstance(a, fx.Node) and a in graph.dependent)]
    if any(_spatial_shape(values.get(a)) != out_shape for a in dep):
        # the region maps through a window op, or the op reads elsewhere
        return _window_or_shift(node, graph, values, dep)
    if len(dep) == 1 and all(_is_small_constant(c) for c in consts) and _is_pointwise(node, graph):
        return Rule("pointwise")
    if all(_is_small_constant(c) for c in consts):
        arithmetic = node.op == "call_function" and node.target in _ARITHMETIC or (
            node.op == "call_method" and node.target in _ARITHMETIC_METHODS)
        channel_cat = node.op == "call_function" and node.target is torch.cat and _arg(node, 1, "dim", 0) in (1, -3)
        if len(dep) >= 2 and arithmetic or channel_cat:
            return Rule("union")  # of one changed input: its own region
    return _window_or_shift(node, graph, values, dep)


def _is_pointwise(node: fx.Node, graph: Graph) -> bool:
    if node.op == "call_module":
        m = graph.module.get_submodule(node.target)
        if type(m) is nn.BatchNorm2d:  # eval mode with running statistics: a per-channel affine map
            return not m.training and m.running_mean is not None
        return type(m) in _POINTWISE_MODULES  # exact types: a subclass may override forward
    if node.op == "call_function":
        return node.target in _POINTWISE_FUNCTIONS or node.target in _ARITHMETIC
    if node.op == "call_method":
        return node.target in _POINTWISE_METHODS or node.target in _ARITHMETIC_METHODS
    return False


def _window_or_shift(node: fx.Node, graph: Graph, values: dict, dep: list) -> Rule:
    if len(dep) != 1 or not isinstance(node.args[0] if node.args else None, fx.Node) or node.args[0] is not dep[0]:
        return Rule("full", why=f"{node.format_node()} (no rule)")
    if node.op == "call_module":
        m = graph.module.get_submodule(node.target)
        if type(m) is nn.Conv2d:
            if m.padding_mode != "zeros":
                return Rule("full", why=f"{node.target}: padding_mode {m.padding_mode!r}")
            return _conv_rule(lambda: m.weight, lambda: m.bias, m.weight.shape, m.stride, m.padding, m.dilation,
                              m.groups)
        if type(m) is nn.MaxPool2d and not m.return_indices:
            return _max_pool_rule(m.kernel_size, m.stride, m.padding, m.dilation)
        if type(m) is nn.AvgPool2d:
            return _avg_pool_rule(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override)
        if type(m) in (nn.ZeroPad2d, nn.ConstantPad2d):
            return _pad_rule(m.padding if isinstance(m.padding, tuple) else (m.padding,) * 4, "constant", getattr(m, "value", 0.0))
        return Rule("full", why=f"{node.target}: {type(m).__name__} (no rule)")
    if node.op == "call_function":
        t = node.target
        rest = [values.get(a) if isinstance(a, fx.Node) else a for a in node.args[1:]]
        kw = {k: (values.get(v) if isinstance(v, fx.Node) else v) for k, v in node.kwargs.items()}
        if t is F.conv2d or t is torch.conv2d:
            names = ["weight", "bias", "stride", "padding", "dilation", "groups"]
            a = dict(zip(names, rest)) | kw
            raw = dict(zip(names, node.args[1:])) | dict(node.kwargs)  # the nodes: resolved per clean run
            w = a.get("weight")
            if not isinstance(w, torch.Tensor) or w.dim() != 4:
                return Rule("full", why=f"{node.name}: conv2d weight")
            return _conv_rule(raw["weight"], raw.get("bias"), w.shape, a.get("stride", 1), a.get("padding", 0),
                              a.get("dilation", 1), a.get("groups", 1))
        if t is F.max_pool2d or t is torch.max_pool2d:
            names = ["kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
            a = dict(zip(names, rest)) | kw
            if a.get("return_indices", False):
                return Rule("full", why=f"{node.name}: max_pool2d with indices")
            return _max_pool_rule(a["kernel_size"], a.get("stride"), a.get("padding", 0), a.get("dilation", 1))
        if t is F.avg_pool2d or t is torch._C._nn.avg_pool2d:
            names = ["kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"]
            a = dict(zip(names, rest)) | kw
            return _avg_pool_rule(a["kernel_size"], a.get("stride"), a.get("padding", 0), a.get("ceil_mode", False),
                                  a.get("count_include_pad", True), a.get("divisor_override"))
        if t is F.pad or t is torch._C._nn.pad:
            names = ["pad", "mode", "value"]
            a = dict(zip(names, rest)) | kw
            return _pad_rule(a["pad"], a.get("mode", "constant"), a.get("value"))
    return Rule("full", why=f"{node.format_node()} (no rule)")
