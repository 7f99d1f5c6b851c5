"""Occlusion (Zeiler & Fergus), Captum-compatible, on the native batch-building and
accumulation ops: memory bounded by ``perturbations_per_eval``, no masks."""
from __future__ import annotations

import math

from typing import Any, Optional, Sequence, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import ops
from ._common import Target, check_inputs, normalize_target, resolve_target

Window = Union[int, Sequence[int]]


def _triple(value: Window, name: str, channels: int, default_channel: int) -> tuple[int, int, int]:
    """An int (every dimension), (h, w) (channel extent `default_channel`) or (c, h, w)."""
    if isinstance(value, int):
        t = (value, value, value)
    else:
        t = tuple(value)
        if len(t) == 2:
            t = (default_channel, *t)
    if len(t) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in t):
        raise ValueError(f"{name} must be an int, (h, w) or (c, h, w) of ints, got {value!r}")
    return t  # type: ignore[return-value]


def _baseline(baselines, inputs: torch.Tensor) -> torch.Tensor:
    """A number, a per-channel (C,) vector or a (C, H, W) / (1 or N, C, H, W) tensor ->
    a (1 or N, C, H, W) tensor in the inputs' dtype and device."""
    n, c, h, w = inputs.shape
    if isinstance(baselines, (int, float)) and not isinstance(baselines, bool):
        return torch.full((1, c, h, w), float(baselines), dtype=inputs.dtype, device=inputs.device)
    if not isinstance(baselines, torch.Tensor):
        raise TypeError(f"baselines must be a number or a tensor, got {type(baselines).__name__}")
    b = baselines.to(device=inputs.device, dtype=inputs.dtype)
    if b.dim() == 0:
        b = b.expand(1, c, h, w)
    elif b.shape == (c,):
        b = b.view(1, c, 1, 1).expand(1, c, h, w)
    elif b.shape == (c, h, w):
        b = b.unsqueeze(0)
    elif b.dim() == 4 and b.shape[1:] == (c, h, w) and b.shape[0] in (1, n):
        pass
    elif b.dim() == 4 and b.shape[0] in (1, n) and all(bs in (1, s) for bs, s in zip(b.shape[1:], (c, h, w))):
        b = b.expand(b.shape[0], c, h, w)
    else:
        raise ValueError(
            f"baselines must be a number, (C,) = ({c},), (C, H, W) = {(c, h, w)} or (1 or N, C, H, W), "
            f"got shape {tuple(b.shape)}"
        )
    if torch.isnan(b).any():
        raise ValueError("baselines contains NaN")
    return b.contiguous()


def _expand_args(args: Any, batch: int, copies: int) -> tuple:
    """Captum's convention: tensors with the batch dimension are repeated per copy."""
    if args is None:
        return ()
    args = args if isinstance(args, tuple) else (args,)
    return tuple(
        a.repeat(copies, *([1] * (a.dim() - 1))) if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == batch else a
        for a in args
    )


def _window_means(maps: torch.Tensor, window, stride) -> torch.Tensor:
    """(N, C, H, W) -> (N, P): the mean of each map over every (border-clipped) window,
    by inclusion-exclusion on a summed-volume table."""
    n = maps.shape[0]
    table = torch.nn.functional.pad(maps.double(), (1, 0, 1, 0, 1, 0)).cumsum(1).cumsum(2).cumsum(3)
    lo, hi = [], []
    for d, w, s in zip(maps.shape[1:], window, stride):
        start = torch.arange((d - w + s - 1) // s + 1, device=maps.device) * s
        lo.append(start)
        hi.append((start + w).clamp(max=d))
    shapes = ((-1, 1, 1), (1, -1, 1), (1, 1, -1))
    lo = [t.view(sh) for t, sh in zip(lo, shapes)]
    hi = [t.view(sh) for t, sh in zip(hi, shapes)]
    total = torch.zeros((n, lo[0].numel(), lo[1].numel(), lo[2].numel()), dtype=torch.float64, device=maps.device)
    for corner in range(8):
        idx = [hi[d] if corner >> d & 1 else lo[d] for d in range(3)]
        sign = 1 if bin(corner).count("1") % 2 == 1 else -1  # (-1) ** (number of lower bounds)
        total += sign * table[:, idx[0], idx[1], idx[2]]
    volume = (hi[0] - lo[0]) * (hi[1] - lo[1]) * (hi[2] - lo[2])
    return (total / volume).reshape(n, -1).to(maps.dtype)


class Occlusion:
    """Slide a window over each image, replace it by a baseline, and attribute to every
    element the mean drop of the target score over the windows that cover it.

    Same arguments and numbers as Captum's ``Occlusion`` for image batches (N, C, H, W).
    ``refine=`` trades exactness for speed: see `attribute`.
    """

    def __init__(self, model: nn.Module):
        self.model = model

    def attribute(
        self,
        inputs: torch.Tensor,
        sliding_window_shapes: Window,
        strides: Optional[Window] = None,
        baselines: Union[float, torch.Tensor] = 0,
        target: Target = None,
        additional_forward_args: Any = None,
        perturbations_per_eval: int = 64,
        show_progress: bool = False,
        refine: Optional[float] = None,
    ) -> torch.Tensor:
        """Input-shaped attributions.

        ``sliding_window_shapes``: ``(c, h, w)``, or ``(h, w)`` for windows through all
        channels. ``strides``: an int, ``(h, w)`` or ``(c, h, w)`` (default 1). ``target``:
        None (each sample's top-1 class on the clean input), an int or one per sample.
        ``perturbations_per_eval``: occluded copies of each image per model call; memory
        is bounded by it, not by the number of windows.

        ``refine``: coarse-to-fine. A first pass occludes non-overlapping windows (stride =
        window); each fine window's score is estimated by the coarse map's mean over it,
        and only the ``refine`` fraction of windows with the largest estimated |effect| is
        evaluated exactly, per image. Model calls drop from P to P_coarse + refine * P; the
        map is exact where the effect is large and interpolated elsewhere (BENCHMARKS.md
        gives measured time and SSIM against the exact map).
        """
        check_inputs(inputs, min_dim=4)
        if inputs.dim() != 4:
            raise ValueError(f"inputs must be images (N, C, H, W), got shape {tuple(inputs.shape)}")
        n, c, h, w = inputs.shape
        shape = (c, h, w)
        window = _triple(sliding_window_shapes, "sliding_window_shapes", c, c)
        stride = _triple(1 if strides is None else strides, "strides", c, 1)
        for name, v, lim in zip("CHW", window, shape):
            if not 0 < v <= lim:
                raise ValueError(f"sliding_window_shapes: the {name} extent {v} must be in [1, {lim}] (the input size)")
        if any(s <= 0 for s in stride):
            raise ValueError(f"strides must be positive, got {stride}")
        if not isinstance(perturbations_per_eval, int) or perturbations_per_eval < 1:
            raise ValueError(f"perturbations_per_eval must be a positive int, got {perturbations_per_eval!r}")
        if refine is not None and (isinstance(refine, bool) or not isinstance(refine, (int, float)) or not 0 < refine <= 1):
            raise ValueError(f"refine must be a fraction in (0, 1] or None, got {refine!r}")
        base = _baseline(baselines, inputs)
        target_t = normalize_target(target, n, inputs.device)
        x = inputs.detach().contiguous()
        total = ops.occlusion_window_count(shape, window, stride)
        coarse_stride = tuple(max(s, wd) for s, wd in zip(stride, window))

        with torch.no_grad():
            clean = self.model(x, *_expand_args(additional_forward_args, n, 1))
            idx = resolve_target(target_t, clean)
            clean_score = clean.gather(1, idx[:, None])[:, 0]
            # one buffer for every chunk: on CPU a fresh 100s-of-MB batch per chunk costs page faults
            buffer = torch.empty((min(perturbations_per_eval, total) * n, c, h, w), dtype=x.dtype, device=x.device)

            def score_drops(count_total: int, build, desc: str) -> torch.Tensor:
                """(N, count_total) clean score minus the score of each occluded copy."""
                diffs = torch.empty(n, count_total, dtype=clean_score.dtype, device=x.device)
                starts = range(0, count_total, perturbations_per_eval)
                for start in tqdm(starts, desc=desc, unit="chunk", disable=not show_progress):
                    count = min(perturbations_per_eval, count_total - start)
                    batch = build(start, count, buffer[: count * n])  # copy-major
                    out = self.model(batch, *_expand_args(additional_forward_args, n, count))
                    scores = out.gather(1, idx.repeat(count)[:, None]).view(count, n)
                    diffs[:, start : start + count] = clean_score[:, None] - scores.t()
                return diffs

            if refine is None or coarse_stride == stride:
                diffs = score_drops(
                    total, lambda s, k, o: ops.occlusion_batch(x, base, window, stride, s, k, out=o), "Occlusion"
                )
            else:
                coarse_total = ops.occlusion_window_count(shape, window, coarse_stride)
                coarse = score_drops(
                    coarse_total,
                    lambda s, k, o: ops.occlusion_batch(x, base, window, coarse_stride, s, k, out=o),
                    "Occlusion (coarse)",
                )
                coarse_map = ops.occlusion_accumulate(coarse, shape, window, coarse_stride)
                diffs = _window_means(coarse_map, window, stride)
                chosen = diffs.abs().topk(max(1, math.ceil(refine * total)), dim=1).indices  # (N, k)
                windows = chosen.t().contiguous()
                exact = score_drops(
                    windows.shape[0],
                    lambda s, k, o: ops.occlusion_batch_at(x, base, window, stride, windows[s : s + k], out=o),
                    "Occlusion (refine)",
                )
                diffs.scatter_(1, chosen, exact)
        return ops.occlusion_accumulate(diffs, shape, window, stride).to(inputs.dtype)
