"""Incremental occlusion for `attr.Occlusion`: the plan of a model for one window grid
(cached per model, input shape, window, stride and field threshold) and the occluded
input patches of a batch of copies."""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import fx, nn

from .. import ops
from .graph import capture
from .plan import OcclusionPlan, _call

# model -> its captured graph (or why it has none) and its plans; dropped with the model
_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class WindowGrid:
    """Captum's window grid over (C, H, W): window p spans [lo, hi) per dimension."""

    lo: torch.Tensor  # (P, 3)
    hi: torch.Tensor  # (P, 3)

    @staticmethod
    def of(shape, window, stride, device) -> "WindowGrid":
        """The windows of a (C, H, W) shape, counted and clipped as the occlusion ops do."""
        counts = [(d - w + s - 1) // s + 1 for d, w, s in zip(shape, window, stride)]
        axes = torch.meshgrid(*[torch.arange(n, device=device) for n in counts], indexing="ij")
        lo = torch.stack([a.reshape(-1) * s for a, s in zip(axes, stride)], 1)
        hi = torch.minimum(lo + torch.tensor(window, device=device), torch.tensor(shape, device=device))
        return WindowGrid(lo, hi)


def plan_for(model: nn.Module, x: torch.Tensor, window, stride, field_threshold: Optional[float]
             ) -> tuple[Optional[OcclusionPlan], Optional[WindowGrid], str]:
    """The model's plan and window grid for occluding `x`-shaped inputs, or None and
    the reason the model cannot be planned."""
    grid = WindowGrid.of(tuple(x.shape[1:]), window, stride, x.device)
    plan, reason = cached_plan(model, x, ("windows", tuple(window), tuple(stride)), grid, field_threshold)
    return plan, (grid if plan is not None else None), reason


def cached_plan(model: nn.Module, x: torch.Tensor, key: tuple, grid: WindowGrid,
                field_threshold: Optional[float] = None) -> tuple[Optional[OcclusionPlan], str]:
    """The model's plan for the windows of `grid` over `x`-shaped inputs (made once per
    model, input shape, dtype, device, `key` naming the grid, and threshold), or None and
    the reason the model cannot be planned."""
    entry = _CACHE.get(model)
    if entry is None:
        graph, reason = capture(model)
        entry = {"graph": graph, "reason": reason, "plans": {}}
        _CACHE[model] = entry
    if entry["graph"] is None:
        return None, entry["reason"]
    full_key = (tuple(x.shape[1:]), x.dtype, x.device, key, field_threshold)
    if full_key not in entry["plans"]:
        graph = entry["graph"]
        values = _all_values(graph.module, graph.nodes, x[:1])
        boxes = ((grid.lo[:, 1], grid.hi[:, 1]), (grid.lo[:, 2], grid.hi[:, 2]))
        entry["plans"][full_key] = OcclusionPlan(graph, values, boxes, field_threshold)
    return entry["plans"][full_key], ""


def _all_values(module: fx.GraphModule, nodes, x: torch.Tensor) -> dict[fx.Node, Any]:
    """Every node's value on one image: the shapes and constants the plan reads."""
    env: dict[fx.Node, Any] = {}
    for node in nodes:
        if node.op == "placeholder":
            env[node] = x
        elif node.op != "output":
            env[node] = _call(module, node, fx.node.map_arg(node.args, env.__getitem__),
                              fx.node.map_arg(node.kwargs, env.__getitem__))
    return env


def input_patches(plan: OcclusionPlan, grid: WindowGrid, x: torch.Tensor, baseline: torch.Tensor,
                  windows: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """Each copy's input patch: image ``samples[k]`` around window ``windows[k]``, the
    window (its channels and pixels) taken from the baseline."""
    first = plan.nodes[plan.graph.nodes[0]]
    origin = first.origin()[windows]
    size = (first.rows.size, first.cols.size)
    image = ops.patch_splice(x, samples, origin, size)
    base_samples = samples if baseline.shape[0] == x.shape[0] else torch.zeros_like(samples)
    base = ops.patch_splice(baseline, base_samples, origin, size)
    lo, hi = grid.lo[windows], grid.hi[windows]  # (K, 3)
    chan = torch.arange(x.shape[1], device=x.device)
    rows = origin[:, 0, None] + torch.arange(size[0], device=x.device)
    cols = origin[:, 1, None] + torch.arange(size[1], device=x.device)
    inside_c = (chan >= lo[:, 0, None]) & (chan < hi[:, 0, None])
    inside_r = (rows >= lo[:, 1, None]) & (rows < hi[:, 1, None])
    inside_x = (cols >= lo[:, 2, None]) & (cols < hi[:, 2, None])
    mask = inside_c[:, :, None, None] & inside_r[:, None, :, None] & inside_x[:, None, None, :]
    return torch.where(mask, base, image)


def worth_tracing(model: nn.Module) -> bool:
    """Whether the default (``incremental=None``) traces the model: only one with
    convolution weights can gain, and tracing runs ``forward`` once with proxies (a Python side
    effect in it, such as a counter, sees them), and the planned batches run the graph,
    not ``forward``, so hooks on the model would not see them: a model with hooks runs
    in full unless asked."""
    modules = list(model.modules())
    hooked = any(m._forward_hooks or m._forward_pre_hooks for m in modules)
    # 4-D weights, not Conv2d modules: a folded copy (interp_ext.fusion) calls F.conv2d
    return not hooked and any(p.dim() == 4 for p in model.parameters())
