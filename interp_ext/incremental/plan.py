"""The occlusion plan: per node, which part of each occluded copy differs from the clean
image's activation (`boxes`), and how a batch of copies computes only that part from
the clean run's activations (`ops.patch_splice`, then the layer's own op on the whole
batch). Exact: every value a copy's output depends on is either recomputed or equal to
the clean run's; ``field_threshold`` opts into Krypton's projective-field cap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import fx, nn

from .. import ops
from .boxes import Patch, cap, conv_changed, patch_of, union
from .graph import Graph, Rule, rule_of

Interval = tuple[torch.Tensor, torch.Tensor]


@dataclass
class NodePlan:
    rule: Rule
    kind: str  # "const", "patch" (a batch of patches) or "full" (a batch of whole values)
    box: Optional[tuple[Interval, Interval]] = None  # changed (rows, cols) per window
    rows: Optional[Patch] = None
    cols: Optional[Patch] = None
    read_origin: Optional[torch.Tensor] = None  # window: (P, 2) top-left of each read box
    read_size: tuple[int, int] = (0, 0)
    whole: bool = False  # a patch as large as the map: consumers see a full value
    cost_full: float = 0.0  # multiply-adds per copy, full re-inference
    cost_incremental: float = 0.0

    def origin(self) -> torch.Tensor:
        """(P, 2): each window's patch top-left (row, column) in the map."""
        return torch.stack((self.rows.origin, self.cols.origin), 1)


def _numel_per_copy(value: Any) -> int:
    return math.prod(value.shape[1:]) if isinstance(value, torch.Tensor) and value.dim() >= 1 else 1


def _full_cost(node: fx.Node, graph: Graph, rule: Rule, value: Any) -> float:
    n = _numel_per_copy(value)
    if rule.kind == "window":
        return float(n * rule.macs)
    if node.op == "call_module":
        m = graph.module.get_submodule(node.target)
        if isinstance(m, nn.Linear):
            return float(m.in_features * m.out_features)
        if isinstance(m, nn.Conv2d):
            return float(n * m.in_channels // m.groups * math.prod(m.kernel_size))
    return float(n)


class OcclusionPlan:
    """Changed patches of every node for the windows of one (input shape, window,
    stride, field threshold), and the batched computation of occluded copies."""

    def __init__(self, graph: Graph, values: dict[fx.Node, Any], boxes: tuple[Interval, Interval],
                 field_threshold: Optional[float] = None):
        self.graph = graph
        self.field_threshold = field_threshold
        self.nodes: dict[fx.Node, NodePlan] = {}
        for node in graph.nodes:
            self.nodes[node] = self._plan_node(node, values, boxes)
        order = {n: i for i, n in enumerate(graph.nodes)}
        # after its last reader a batch value is dropped
        self.last_use = {n: max((order[u] for u in n.users), default=order[n]) for n in graph.nodes}
        # the clean run keeps what the batches read: constants and the maps patches splice into
        self.keep = {n for n, p in self.nodes.items() if p.kind == "const" or p.kind == "patch" and not p.whole}
        self.cost_full = sum(p.cost_full for p in self.nodes.values())
        self.cost_incremental = sum(p.cost_incremental for p in self.nodes.values())

    # ---- planning -----------------------------------------------------------------------

    def _limit(self, extent: int) -> int:
        return max(1, math.ceil(self.field_threshold * extent)) if self.field_threshold else extent

    def _plan_node(self, node: fx.Node, values: dict, boxes) -> NodePlan:
        rule = rule_of(node, self.graph, values)
        value = values.get(node)
        if rule.kind in ("const", "output"):
            return NodePlan(rule, "const" if rule.kind == "const" else "full")
        cost = _full_cost(node, self.graph, rule, value)
        if rule.kind == "input":
            h, w = value.shape[2:]
            box = boxes
        else:
            deps = [a for a in node.all_input_nodes if a in self.graph.dependent]
            if rule.kind == "full" or any(self.nodes[d].kind != "patch" or self.nodes[d].whole for d in deps):
                return NodePlan(rule, "full", cost_full=cost, cost_incremental=cost)
            h, w = value.shape[2:]
            dep = self.nodes[deps[0]]
            if rule.kind == "pointwise":
                return NodePlan(rule, "patch", dep.box, dep.rows, dep.cols, cost_full=cost,
                                cost_incremental=cost * dep.rows.size * dep.cols.size / (h * w))
            if rule.kind == "shift":
                (rlo, rhi), (clo, chi) = dep.box
                top, left = rule.shift
                box = ((rlo + top, rhi + top), (clo + left, chi + left))
                rows = Patch(dep.rows.origin + top, dep.rows.size, h)
                cols = Patch(dep.cols.origin + left, dep.cols.size, w)
                return NodePlan(rule, "patch", box, rows, cols, cost_full=cost,
                                cost_incremental=cost * rows.size * cols.size / (h * w))
            if rule.kind == "window":
                box = tuple(
                    cap(*conv_changed(lo, hi, k, s, p, d, extent), self._limit(extent))
                    for (lo, hi), k, s, p, d, extent in zip(dep.box, rule.kernel, rule.stride, rule.padding,
                                                             rule.dilation, (h, w))
                )
            else:  # union
                box = dep.box
                for d in deps[1:]:
                    box = tuple(union(a, b) for a, b in zip(box, self.nodes[d].box))
                box = tuple(cap(lo, hi, self._limit(extent)) for (lo, hi), extent in zip(box, (h, w)))
        rows, cols = patch_of(*box[0], h), patch_of(*box[1], w)
        plan = NodePlan(rule, "patch", box, rows, cols, whole=rows.size == h and cols.size == w, cost_full=cost,
                        cost_incremental=cost * rows.size * cols.size / (h * w))
        if rule.kind == "window":
            plan.read_origin = torch.stack(
                (rows.origin * rule.stride[0] - rule.padding[0], cols.origin * rule.stride[1] - rule.padding[1]), 1)
            plan.read_size = tuple((n - 1) * s + (k - 1) * d + 1 for n, s, k, d in zip(
                (rows.size, cols.size), rule.stride, rule.kernel, rule.dilation))
        return plan

    @property
    def flop_ratio(self) -> float:
        """Full re-inference's multiply-adds per copy over the plan's."""
        return self.cost_full / max(self.cost_incremental, 1e-9)

    def report(self) -> str:
        """One line per node: its kind and patch size (what the plan recomputes)."""
        lines = [f"FLOP ratio {self.flop_ratio:.2f}x (full {self.cost_full:.3g} / incremental "
                 f"{self.cost_incremental:.3g} multiply-adds per copy)"]
        for node, p in self.nodes.items():
            if p.kind == "const":
                continue
            where = f"patch {p.rows.size}x{p.cols.size} of {p.rows.extent}x{p.cols.extent}" if p.rows else "full"
            if p.whole:
                where += " (whole map)"
            lines.append(f"  {node.name:<28} {p.rule.kind:<9} {where}{'  ' + p.rule.why if p.rule.why else ''}")
        return "\n".join(lines)

    # ---- execution ----------------------------------------------------------------------

    def clean_run(self, x: torch.Tensor) -> tuple[Any, dict[fx.Node, Any]]:
        """The model's output on the clean batch, and the activations the copies read."""
        env: dict[fx.Node, Any] = {}
        kept: dict[fx.Node, Any] = {}
        for i, node in enumerate(self.graph.nodes):
            if node.op == "placeholder":
                env[node] = x
            elif node.op == "output":
                return _plain(fx.node.map_arg(node.args[0], lambda a: env[a])), kept
            else:
                env[node] = _call(self.graph.module, node, fx.node.map_arg(node.args, lambda a: env[a]),
                                  fx.node.map_arg(node.kwargs, lambda a: env[a]))
            if node in self.keep:
                v = env[node]
                # patch_splice reads contiguous maps: make each one so once, not per batch
                kept[node] = v.contiguous() if isinstance(v, torch.Tensor) and self.nodes[node].kind == "patch" else v
            for a in node.all_input_nodes:
                if self.last_use[a] <= i:
                    env.pop(a, None)
        raise RuntimeError("graph without output")

    def run(self, base: dict[fx.Node, Any], windows: torch.Tensor, samples: torch.Tensor,
            input_patch: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format,
            advance: bool = False) -> Any:
        """The model's output on K occluded copies: copy k is image ``samples[k]`` with
        window ``windows[k]`` occluded, its input patch ``input_patch[k]`` (at the input
        node's origin). ``memory_format``: the layout of the whole maps (where the plan
        runs in full); on a CPU channels-last runs the late layers several times faster.

        ``advance`` (one copy per sample): each copy becomes its sample's base, its patches
        written into ``base`` as they are computed, so that the next run changes the copy
        further (a chain of replacements). Writing early is safe: a patch changes only its
        own rectangle, which every later reader takes from the patch anyway."""
        vals: dict[fx.Node, Any] = {}
        origins: dict[fx.Node, torch.Tensor] = {}
        whole: dict[fx.Node, torch.Tensor] = {}
        k = samples.shape[0]
        zeros = torch.zeros(k, 2, dtype=torch.long, device=samples.device)

        def origin(n: fx.Node) -> torch.Tensor:
            if n not in origins:
                origins[n] = self.nodes[n].origin()[windows]
            return origins[n]

        def full_value(n: fx.Node) -> Any:
            p = self.nodes[n]
            if p.kind == "const":
                return base[n]
            if p.kind == "full" or p.whole:
                return vals[n]
            if n not in whole:  # the clean map with each copy's patch spliced in
                src = base[n]
                whole[n] = ops.patch_splice(src, samples, zeros, src.shape[2:], 0.0, vals[n], origin(n)).contiguous(
                    memory_format=memory_format)
            return whole[n]

        for i, node in enumerate(self.graph.nodes):
            p = self.nodes[node]
            if p.kind == "const":
                continue
            if node.op == "placeholder":
                vals[node] = input_patch
            elif node.op == "output":
                return _plain(fx.node.map_arg(node.args[0], full_value))
            elif p.kind == "full":
                vals[node] = _call(self.graph.module, node, fx.node.map_arg(node.args, full_value),
                                   fx.node.map_arg(node.kwargs, full_value))
            else:
                vals[node] = self._patch_value(node, p, base, vals, samples, windows, origin)
                if p.whole:
                    vals[node] = vals[node].contiguous(memory_format=memory_format)
            if advance and node in base and p.kind == "patch":
                _write_patches(base[node], vals[node], samples, origin(node))
            for a in node.all_input_nodes:
                if self.last_use[a] <= i:
                    vals.pop(a, None)
                    whole.pop(a, None)
        raise RuntimeError("graph without output")

    def _patch_value(self, node, p: NodePlan, base, vals, samples, windows, origin) -> torch.Tensor:
        dependent = self.graph.dependent
        if p.rule.kind == "shift":
            return vals[node.all_input_nodes[0]]
        if p.rule.kind == "window":
            dep = node.args[0]
            read = ops.patch_splice(base[dep], samples, p.read_origin[windows], p.read_size, p.rule.fill, vals[dep],
                                    origin(dep))
            return p.rule.apply(read, lambda a: base[a] if isinstance(a, fx.Node) else a)

        def operand(a: fx.Node) -> Any:
            if a not in dependent:
                return base[a]
            q = self.nodes[a]
            if p.rule.kind == "pointwise" or (q.rows is p.rows and q.cols is p.cols):
                return vals[a]
            return ops.patch_splice(base[a], samples, origin(node), (p.rows.size, p.cols.size), 0.0, vals[a], origin(a))

        args = fx.node.map_arg(node.args, operand)
        kwargs = fx.node.map_arg(node.kwargs, operand)
        return _call(self.graph.module, node, args, kwargs)


def _write_patches(maps: torch.Tensor, patches: torch.Tensor, samples: torch.Tensor, origin: torch.Tensor) -> None:
    """``maps[samples[k], :, r:r+h, c:c+w] = patches[k]`` at each ``origin[k] = (r, c)``."""
    h, w = patches.shape[2:]
    for k, (s, (r, c)) in enumerate(zip(samples.tolist(), origin.tolist())):
        maps[s, :, r : r + h, c : c + w] = patches[k]


def _plain(value: Any) -> Any:
    """fx's immutable containers as the model's own (a dict output stays a dict)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_plain(v) for v in value)
    return value


def _call(module: fx.GraphModule, node: fx.Node, args, kwargs) -> Any:
    if node.op == "call_module":
        return module.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    if node.op == "get_attr":
        obj: Any = module
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return obj
    raise RuntimeError(f"unexpected node {node.format_node()}")
