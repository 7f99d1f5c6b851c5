"""Run only the part of a network after one layer: the graph of the model (``torch.fx``)
cut at the layer, for AblationCAM's ablated copies.

The model is traced with the layer as a leaf. The suffix is the layer's node and
everything computed from it; the values it takes from before the layer (the crossing
values: a skip connection's tensor, ``x.size(0)`` of the input, a shape) are computed
ONCE per image, and only what they need: neither the layer (its output is what gets
replaced) nor the network that only feeds it runs (a plain chain of layers costs nothing
before the cut). To give them to a batch of B copies, each is classified by running the prefix
on 1 and on 2 copies of an image: a tensor with a leading batch dimension is repeated to
B, an int equal to the batch size (1, then 2) becomes B, anything equal in both runs is a
constant, anything else makes the cut unusable (None). The caller still checks one
unablated copy against the model's own score before trusting the cut.
"""
from __future__ import annotations

import weakref
from typing import Any, Optional

import torch
from torch import fx, nn

from ..fusion import _Tracer


class _Unsupported(Exception):
    pass


class _Prefix(fx.Interpreter):
    """Runs only the nodes the crossing values are computed from (the rest, the layer and
    everything before it that only feeds the layer included, give None); keeps every value."""

    def __init__(self, gm: fx.GraphModule, needed: set):
        super().__init__(gm, garbage_collect_values=False)
        self.needed = needed

    def run_node(self, n: fx.Node) -> Any:
        if n.op != "placeholder" and n not in self.needed:
            return None
        return super().run_node(n)


def _kind(v1: Any, v2: Any) -> Any:
    """How a crossing value depends on the batch: "batch" (tensor, leading dim), "size"
    (an int equal to the batch size), "const", or a tuple of kinds for a sequence."""
    if isinstance(v1, torch.Tensor) and isinstance(v2, torch.Tensor):
        if v1.dim() > 0 and v1.shape[0] == 1 and v2.shape[0] == 2 and v1.shape[1:] == v2.shape[1:]:
            return "batch"
        if v1.shape == v2.shape and torch.equal(v1, v2):
            return "const"
        raise _Unsupported
    if isinstance(v1, bool) or v1 is None or isinstance(v1, (float, str, torch.dtype, torch.device)):
        if type(v1) is type(v2) and v1 == v2:
            return "const"
        raise _Unsupported
    if isinstance(v1, int) and isinstance(v2, int):
        if v1 == v2:
            return "const"
        if (v1, v2) == (1, 2):
            return "size"
        raise _Unsupported
    if isinstance(v1, (tuple, list)) and type(v1) is type(v2) and len(v1) == len(v2):
        return tuple(_kind(a, b) for a, b in zip(v1, v2))
    raise _Unsupported


def _make(kind: Any, v: Any, b: int) -> Any:
    if kind == "batch":
        return v.expand(b, *v.shape[1:]).contiguous()  # a copy: the suffix may write into it
    if kind == "size":
        return b
    if kind == "const":
        return v.clone() if isinstance(v, torch.Tensor) else v
    return type(v)(_make(k, x, b) for k, x in zip(kind, v))


class GraphSuffix:
    """The network after layer ``name`` of ``model`` (see the module docstring)."""

    def __init__(self, model: nn.Module, name: str):
        gm = fx.GraphModule(model, _Tracer([name]).trace(model))
        nodes = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == name]
        if len(nodes) != 1:
            raise _Unsupported
        target = nodes[0]
        suffix = {target}
        for n in gm.graph.nodes:  # topological order: a node after the cut has an input after it
            if n is not target and any(a in suffix for a in n.all_input_nodes):
                suffix.add(n)
        crossing = [n for n in gm.graph.nodes if n not in suffix and n.op != "get_attr"
                    and any(u in suffix and u is not target for u in n.users)]
        g = fx.Graph()
        env = {target: g.placeholder("layer_output")}
        for i, c in enumerate(crossing):
            env[c] = g.placeholder(f"crossing_{i}")
        for n in gm.graph.nodes:
            if n.op == "get_attr" and any(u in suffix for u in n.users):
                env[n] = g.node_copy(n, lambda a: env[a])
        for n in gm.graph.nodes:
            if n in suffix and n is not target:
                env[n] = g.node_copy(n, lambda a: env[a])
        needed, stack = set(), list(crossing)
        while stack:
            node = stack.pop()
            if node not in needed:
                needed.add(node)
                stack.extend(node.all_input_nodes)
        self.gm, self.target, self.crossing, self.needed = gm, target, crossing, needed
        self.suffix = fx.GraphModule(gm, g)
        self.kinds: Optional[list] = None

    def prefix(self, x: torch.Tensor) -> list:
        """The crossing values for input ``x``."""
        interp = _Prefix(self.gm, self.needed)
        interp.run(x)
        return [interp.env[c] for c in self.crossing]

    def classify(self, x1: torch.Tensor) -> None:
        """Learn how each crossing value depends on the batch (``x1``: one image)."""
        v1, v2 = self.prefix(x1), self.prefix(x1.expand(2, *x1.shape[1:]).contiguous())
        self.kinds = [_kind(a, b) for a, b in zip(v1, v2)]

    def run(self, layer_output: torch.Tensor, values: list) -> Any:
        """The model's output with ``layer_output`` (B copies) as the layer's output and the
        crossing values of ONE image (`prefix`)."""
        b = layer_output.shape[0]
        return self.suffix(layer_output, *(_make(k, v, b) for k, v in zip(self.kinds, values)))


_CUTS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _structure(model: nn.Module) -> tuple:
    """What a cut depends on: the module and parameter objects (not their values, which
    the cut reads live; a replaced submodule or parameter traces again)."""
    return tuple(id(m) for m in model.modules()) + tuple(id(p) for p in model.parameters())


def graph_suffix(model: nn.Module, name: str, example: torch.Tensor) -> Optional[GraphSuffix]:
    """The cut of `model` after layer `name`, classified on ``example`` (one image), kept
    per model and layer while its structure is the same; None when the model cannot be
    traced or cut there."""
    per_model = _CUTS.setdefault(model, {})
    state = _structure(model)
    key = name
    if key in per_model and per_model[key][0] == state:
        cut = per_model[key][1]
    else:
        try:
            cut = GraphSuffix(model, name)
        except Exception:  # noqa: BLE001  (a model torch.fx cannot trace keeps the hook path)
            cut = None
        per_model[key] = (state, cut)
    if cut is None:
        return None
    if cut.kinds is None:
        try:
            with torch.inference_mode():
                cut.classify(example)
        except Exception:  # noqa: BLE001
            per_model[key] = (state, None)
            return None
    return cut

