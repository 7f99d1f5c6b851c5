"""Chains of replacements for the patch metrics (region perturbation, selectivity): copy
``k`` of an image is copy ``k - 1`` with one more window replaced, so with copy ``k - 1``'s
activations as the base each step recomputes only what that window reaches, as
incremental occlusion does from the clean image (`OcclusionPlan.run` with ``advance``)."""
from __future__ import annotations

import time
from typing import Callable, Optional

import torch
from torch import nn

from .. import ops, tuning
from .occlusion import WindowGrid, cached_plan
from .plan import OcclusionPlan


def patch_grid(shape: tuple[int, int, int], patch: int, pad_top: int, pad_left: int, device) -> WindowGrid:
    """Square windows of side ``patch`` tiling the image padded by ``pad_top`` / ``pad_left``
    (row-major, each clipped to the image): Quantus's patches."""
    c, h, w = shape
    rows, cols = -(-(h + pad_top) // patch), -(-(w + pad_left) // patch)
    a, b = torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij")
    top, left = a.reshape(-1) * patch - pad_top, b.reshape(-1) * patch - pad_left
    zero = torch.zeros_like(top)
    lo = torch.stack([zero, top.clamp(min=0), left.clamp(min=0)], 1)
    hi = torch.stack([zero + c, (top + patch).clamp(max=h), (left + patch).clamp(max=w)], 1)
    return WindowGrid(lo, hi)


def chain_plan(model: nn.Module, x: torch.Tensor, grid: WindowGrid, key: tuple) -> tuple[Optional[OcclusionPlan], str]:
    """The plan of `model` for one window of `grid` at a time, or None and why."""
    return cached_plan(model, x, ("chain",) + key, grid)


def run_chain(plan: OcclusionPlan, grid: WindowGrid, x: torch.Tensor, canvas: torch.Tensor, order: torch.Tensor,
              steps: int, score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], tuner_model: Optional[nn.Module],
              kind: str, progress: Optional[Callable[[], None]] = None) -> torch.Tensor:
    """Scores ``(N, steps)``: copy ``k`` of image ``n`` is ``x[n]`` with windows
    ``order[n, :k + 1]`` replaced by ``canvas[n]``; ``score(output, samples)`` turns the
    model's output on copies of ``samples`` into one score each. The copies of a step run
    in batches whose size and layout the execution tuner measures (kind ``kind`` of
    ``tuner_model``), or all at once as they are when ``tuner_model`` is None."""
    n = x.shape[0]
    _, clean = plan.clean_run(x)
    # the base: each image's activations, advanced step by step; copies of its own (a kept
    # map may be the caller's input, or share storage with another node's)
    kept = {node: v.clone() if plan.nodes[node].kind == "patch" else v for node, v in clean.items()}
    current = x.clone()
    first = plan.nodes[plan.graph.nodes[0]]
    size = (first.rows.size, first.cols.size)
    in_origin = first.origin()
    lo, hi = grid.lo.tolist(), grid.hi.tolist()
    out = torch.empty(n, steps, dtype=torch.float64, device=x.device)
    tuner = None if tuner_model is None else tuning.tuner_for(tuner_model, kind, x)
    for k in range(steps):
        windows = order[:, k]
        for i, wid in enumerate(windows.tolist()):
            (_, r0, c0), (_, r1, c1) = lo[wid], hi[wid]
            current[i, :, r0:r1, c0:c1] = canvas[i, :, r0:r1, c0:c1]
        start = 0
        while start < n:
            execution = tuner.next(n) if tuner else tuning.Execution(n)
            samples = torch.arange(start, min(start + execution.batch, n), device=x.device)
            began = time.perf_counter()
            patches = ops.patch_splice(current, samples, in_origin[windows[samples]], size)
            output = plan.run(kept, windows[samples], samples, patches, execution.memory_format, advance=True)
            out[samples, k] = score(output, samples)
            if tuner:
                if x.device.type == "cuda":
                    torch.cuda.synchronize(x.device)
                tuner.record(execution, samples.shape[0], time.perf_counter() - began)
            start += samples.shape[0]
        if progress is not None:
            progress()
    return out
