"""Cheaper passes for explaining: a copy of an eval-mode model with its BatchNorm layers
folded into the convolutions before them.

In eval mode ``bn(conv(x))`` is one convolution with rescaled weights and a shifted
bias; the planner's passes (a forward and two backward passes to the input) then skip
every BatchNorm forward and backward: about a sixth of a pass on the bundled
EfficientNet-Lite0 (profiled, 1 thread). The folded copy computes the same function to
float rounding (rtol ~1e-5), not bit for bit; a gradient can differ more where a rectifier's
input sits within rounding of its bound (the unit then falls on the other side).
"""
from __future__ import annotations

import copy
import operator
import weakref
from typing import Optional, Sequence

import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_conv_bn_weights


class _Tracer(fx.Tracer):
    """Traces through modules, except torch's own and the ones named in `keep` (the
    layers whose outputs are captured by forward hooks must stay callable modules)."""

    def __init__(self, keep: Sequence[str]):
        super().__init__()
        self.keep = set(keep)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.keep or super().is_leaf_module(m, qualname)


def _owner(root: nn.Module, target: str) -> tuple[nn.Module, str]:
    *path, name = target.split(".")
    return root.get_submodule(".".join(path)) if path else root, name


def _foldable_bn(gm: fx.GraphModule, node: fx.Node) -> Optional[nn.BatchNorm2d]:
    if node.op != "call_module":
        return None
    bn = gm.get_submodule(node.target)
    if type(bn) is not nn.BatchNorm2d or bn.training or not bn.track_running_stats or len(node.args) != 1:
        return None
    return bn


def fold_batchnorm(model: nn.Module, keep: Sequence[str] = ()) -> Optional[tuple[fx.GraphModule, int]]:
    """(a folded copy of `model`, the number of BatchNorm layers folded), or None when the
    model cannot be traced by ``torch.fx`` or has nothing to fold. The model itself is
    not changed; `keep` names modules that stay whole (their insides are not folded).
    The copy's ``folded_from`` is the model's class."""
    try:
        root = copy.deepcopy(model).eval()
        graph = _Tracer(keep).trace(root)
    except Exception:  # noqa: BLE001  (any model torch.fx cannot trace simply keeps its passes)
        return None
    gm = fx.GraphModule(root, graph)
    folded = 0
    kept = set(keep)
    for node in list(gm.graph.nodes):
        bn = _foldable_bn(gm, node) if node.target not in kept else None
        conv = node.args[0] if bn is not None else None
        # a kept layer's output must stay what it was: neither it nor the conv before it changes
        if conv is None or not isinstance(conv, fx.Node) or len(conv.users) != 1 or conv.target in kept:
            continue
        if conv.op == "call_module" and type(gm.get_submodule(conv.target)) is nn.Conv2d:
            owner, name = _owner(gm, conv.target)
            setattr(owner, name, fuse_conv_bn_eval(gm.get_submodule(conv.target), bn))
        elif conv.op == "call_function" and conv.target is F.conv2d and _fold_functional(gm, conv, bn):
            pass
        else:
            continue
        node.replace_all_uses_with(conv)
        gm.graph.erase_node(node)
        folded += 1
    if not folded:
        return None
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.folded_from = type(model)  # what it stands for (profilers and pass counters look for the model's class)
    return gm, folded


def _fold_functional(gm: fx.GraphModule, conv: fx.Node, bn: nn.BatchNorm2d) -> bool:
    """``F.conv2d(x, weight, bias, ...)`` with its weight (and bias) read from parameters
    used nowhere else: the parameters are replaced by the folded ones."""
    args = list(conv.args) + [None] * (7 - len(conv.args))
    weight, bias = args[1], conv.kwargs.get("bias", args[2])
    if conv.kwargs.keys() - {"bias", "stride", "padding", "dilation", "groups"}:
        return False
    if not isinstance(weight, fx.Node) or weight.op != "get_attr" or len(weight.users) != 1:
        return False
    if bias is not None and (not isinstance(bias, fx.Node) or bias.op != "get_attr" or len(bias.users) != 1):
        return False
    w = operator.attrgetter(weight.target)(gm)
    b = operator.attrgetter(bias.target)(gm) if bias is not None else None
    new_w, new_b = fuse_conv_bn_weights(w, b, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    owner, name = _owner(gm, weight.target)
    setattr(owner, name, new_w)
    if bias is not None:
        owner, name = _owner(gm, bias.target)
        setattr(owner, name, new_b)
        return True
    owner.register_parameter(name + "_folded_bias", new_b)
    with gm.graph.inserting_before(conv):
        bias_node = gm.graph.get_attr(f"{weight.target}_folded_bias")
    if "bias" in conv.kwargs:
        conv.kwargs = {**conv.kwargs, "bias": bias_node}
    else:
        args[2] = bias_node
        conv.args = tuple(a for a in args[: max(3, len(conv.args))])
    return True


def parameters_state(model: nn.Module) -> tuple:
    """What changes when a model's parameters or buffers are updated in place or replaced
    (an optimiser step, load_state_dict): to know when a folded copy is stale."""
    return tuple((id(t), t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))




_FOLDED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def folded_copy(model: nn.Module, keep: Sequence[str] = ()) -> Optional[fx.GraphModule]:
    """`fold_batchnorm`'s copy, made once per model and `keep` and kept while the model's
    parameters and buffers are unchanged (every explainer of one model shares it); None
    when there is nothing to fold."""
    per_model = _FOLDED.setdefault(model, {})
    key, state = tuple(keep), parameters_state(model)
    if key not in per_model or per_model[key][0] != state:
        result = fold_batchnorm(model, keep)
        per_model[key] = (state, None if result is None else result[0])
    return per_model[key][1]
