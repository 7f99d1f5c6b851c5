"""Occlusion (Zeiler & Fergus), Captum-compatible, on the native batch-building and
accumulation ops: memory bounded by ``perturbations_per_eval``, no masks."""
from __future__ import annotations

import math
import time

from typing import Any, Optional, Sequence, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import incremental as _incremental
from .. import ops
from .. import tuning as _tuning  # used at call time (tuning imports attr)
from ._common import Target, check_finite, check_inputs, in_eval_mode, model_output, normalize_target, resolve_target

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
        check_finite(torch.tensor(float(baselines)), "baselines")
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
    check_finite(b, "baselines")
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


def _upsample_window_scores(coarse: torch.Tensor, shape, window, stride, coarse_stride) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of coarse windows (N, P_coarse) -> estimates for every fine window (N, P),
    by linear interpolation along each axis of the window origins, and a (P,) mask of the
    fine windows that are coarse windows (coarse strides are multiples of the fine ones),
    whose estimates are their exact scores."""
    n = coarse.shape[0]
    counts = [(d - w + s - 1) // s + 1 for d, w, s in zip(shape, window, coarse_stride)]
    grid = coarse.double().view(n, *counts)
    exact = torch.ones((), dtype=torch.bool, device=coarse.device)
    for axis, (d, w, s, cs, nc) in enumerate(zip(shape, window, stride, coarse_stride, counts)):
        origin = torch.arange((d - w + s - 1) // s + 1, device=coarse.device) * s
        lo = (origin // cs).clamp(max=nc - 1)
        hi = (lo + 1).clamp(max=nc - 1)
        frac = ((origin - lo * cs).double() / cs).clamp(0, 1)
        view = [1] * 4
        view[axis + 1] = -1
        a, b = grid.index_select(axis + 1, lo), grid.index_select(axis + 1, hi)
        grid = a + (b - a) * frac.view(view)
        exact = exact.unsqueeze(-1) & (origin == lo * cs)
    return grid.reshape(n, -1).to(coarse.dtype), exact.reshape(-1)


class Occlusion:
    """Slide a window over each image, replace it by a baseline, and attribute to every
    element the mean drop of the target score over the windows that cover it.

    Same arguments and numbers as Captum's ``Occlusion`` for image batches (N, C, H, W).
    ``refine=`` trades exactness for speed: see `attribute`. The model runs in eval mode
    (a model in train mode gets every module's flag back afterwards, also on an error).
    """

    def __init__(self, model: nn.Module):
        self.model = model

    @in_eval_mode
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
        incremental: Optional[bool] = None,
        field_threshold: Optional[float] = None,
    ) -> torch.Tensor:
        """Input-shaped attributions.

        ``sliding_window_shapes``: ``(c, h, w)``, or ``(h, w)`` for windows through all
        channels. ``strides``: an int, ``(h, w)`` or ``(c, h, w)`` (default 1). ``target``:
        None (each sample's top-1 class on the clean input), an int or one per sample.
        ``perturbations_per_eval``: occluded copies of each image per model call; memory
        is bounded by it, not by the number of windows.

        ``refine``: coarse-to-fine. A first pass occludes non-overlapping windows (the
        smallest multiple of the stride that is at least the window); the other windows'
        scores are interpolated linearly between them, and only the ``refine`` fraction
        of windows with the largest estimated ``|effect|`` is evaluated exactly, per image.
        Model calls drop from P to P_coarse + refine * P; the map is exact where the
        effect is large and interpolated elsewhere (BENCHMARKS.md gives measured time
        and SSIM against the exact map).

        ``incremental``: an occluded copy differs from the image only inside its window,
        so each layer needs to recompute only the region the window reaches. ``True``
        computes every copy that way from the clean image's activations (the model's
        graph is traced once with ``torch.fx`` and planned per input shape, window and
        stride; convolutions, pooling, padding, element-wise ops, eval-mode batch norm,
        residual adds and channel concatenations are planned, anything else and
        everything after it runs in full); the map equals full re-inference's to
        rounding. ``False`` runs the model on whole copies. ``None`` (default) is
        incremental when the model can be planned and the plan saves at least 1.2x the
        multiply-adds (`incremental_plan` reports it). A model that takes
        ``additional_forward_args`` runs in full.

        ``field_threshold``: approximate, opt-in (Krypton's projective-field
        thresholding): the changed region of every layer is capped at this fraction
        (0, 1] of the map's side, centred on the window; changes outside it are ignored.
        Faster where the exact region grows to the whole map (BENCHMARKS.md gives the
        speed-up and SSIM against the exact map). Implies ``incremental``.

        Incremental batches are sized and laid out by measurement (`interp_ext.tuning`:
        windows per batch up to ``perturbations_per_eval``, NCHW or channels-last for the
        layers that run in full), so maps agree with full re-inference to float
        rounding, not bit for bit.
        """
        check_inputs(inputs, min_dim=4, model=self.model)
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
        # as Captum: a larger stride leaves elements that no window covers (their attribution is 0)
        for name, s, v in zip("CHW", stride, window):
            if s > v:
                raise ValueError(f"strides: the {name} stride {s} must not exceed the window's {name} extent {v}")
        if not isinstance(perturbations_per_eval, int) or perturbations_per_eval < 1:
            raise ValueError(f"perturbations_per_eval must be a positive int, got {perturbations_per_eval!r}")
        if refine is not None and (isinstance(refine, bool) or not isinstance(refine, (int, float)) or not 0 < refine <= 1):
            raise ValueError(f"refine must be a fraction in (0, 1] or None, got {refine!r}")
        if incremental is not None and not isinstance(incremental, bool):
            raise ValueError(f"incremental must be True, False or None, got {incremental!r}")
        if field_threshold is not None:
            if isinstance(field_threshold, bool) or not isinstance(field_threshold, (int, float)) or not 0 < field_threshold <= 1:
                raise ValueError(f"field_threshold must be a fraction in (0, 1] or None, got {field_threshold!r}")
            if incremental is False:
                raise ValueError("field_threshold caps the changed regions of incremental inference: it needs incremental=True or None, got incremental=False")
        base = _baseline(baselines, inputs)
        target_t = normalize_target(target, n, inputs.device)
        x = inputs.detach().contiguous()
        total = ops.occlusion_window_count(shape, window, stride)
        coarse_stride = tuple(s * -(-wd // s) for s, wd in zip(stride, window))

        with torch.inference_mode():  # forward only: no autograd records, no version counters
            plan, grid = None, None
            if incremental or field_threshold is not None or (incremental is None and _incremental.worth_tracing(self._planned)):
                plan, grid, reason = self._plan(x, window, stride, field_threshold, additional_forward_args)
                if plan is not None and incremental is None and field_threshold is None and plan.flop_ratio < 1.2:
                    plan = None  # not worth it: full copies
                if plan is None and (incremental or field_threshold is not None):
                    raise ValueError(f"incremental: this model cannot be planned: {reason}")
            if plan is not None:
                clean, kept = plan.clean_run(x)
                clean = model_output(clean)
            else:
                clean = model_output(self.model(x, *_expand_args(additional_forward_args, n, 1)))
            idx = resolve_target(target_t, clean)
            clean_score = clean.gather(1, idx[:, None])[:, 0]
            # one buffer for every chunk: on CPU a fresh 100s-of-MB batch per chunk costs page faults
            buffer = None if plan is not None else torch.empty(
                (min(perturbations_per_eval, total) * n, c, h, w), dtype=x.dtype, device=x.device)
            samples_of = torch.arange(n, device=x.device)

            def outputs(ids: torch.Tensor, stride_: tuple, execution) -> torch.Tensor:
                """Scores of the copies occluding window ids[j, n] of image n (row j N + n)."""
                count = ids.shape[0]
                if plan is None:
                    batch = ops.occlusion_batch_at(x, base, window, stride_, ids, out=buffer[: count * n])
                    return model_output(self.model(batch, *_expand_args(additional_forward_args, n, count)))
                run_plan, run_grid = (plan, grid) if stride_ == stride else self._plan(
                    x, window, stride_, field_threshold, None)[:2]
                windows, samples = ids.reshape(-1), samples_of.repeat(count)
                patches = _incremental.input_patches(run_plan, run_grid, x, base, windows, samples)
                return model_output(run_plan.run(kept, windows, samples, patches, execution.memory_format))

            def score_drops(count_total: int, ids_of, stride_: tuple, desc: str) -> torch.Tensor:
                """(N, count_total) clean score minus the score of each occluded copy."""
                diffs = torch.empty(n, count_total, dtype=clean_score.dtype, device=x.device)
                # incremental batches: the windows per batch (within perturbations_per_eval) and
                # the late layers' layout are measured on the work itself (see interp_ext.tuning)
                tuner = None if plan is None else _tuning.tuner_for(
                    self._planned, f"occlusion-incremental {window} {stride_} {field_threshold}", x)
                start = 0
                with tqdm(total=count_total, desc=desc, unit="window", disable=not show_progress) as bar:
                    while start < count_total:
                        execution = tuner.next(perturbations_per_eval) if tuner else None
                        count = min(execution.batch if execution else perturbations_per_eval, count_total - start)
                        began = time.perf_counter()
                        out = outputs(ids_of(start, count), stride_, execution)
                        scores = out.gather(1, idx.repeat(count)[:, None]).view(count, n)
                        diffs[:, start : start + count] = clean_score[:, None] - scores.t()
                        if tuner:
                            if x.device.type == "cuda":
                                torch.cuda.synchronize(x.device)
                            tuner.record(execution, count, time.perf_counter() - began)
                        start += count
                        bar.update(count)
                return diffs

            def window_range(start: int, count: int) -> torch.Tensor:
                return torch.arange(start, start + count, device=x.device)[:, None].expand(count, n)

            if refine is None or coarse_stride == stride:
                diffs = score_drops(total, window_range, stride, "Occlusion")
            else:
                coarse_total = ops.occlusion_window_count(shape, window, coarse_stride)
                coarse = score_drops(coarse_total, window_range, coarse_stride, "Occlusion (coarse)")
                diffs, known = _upsample_window_scores(coarse, shape, window, stride, coarse_stride)
                budget = min(math.ceil(refine * total), int((~known).sum()))
                if budget > 0:
                    # the coarse windows are already exact: rank only the interpolated ones
                    chosen = diffs.abs().masked_fill(known, -1.0).topk(budget, dim=1).indices  # (N, k)
                    windows = chosen.t().contiguous()
                    exact = score_drops(budget, lambda s, k: windows[s : s + k], stride, "Occlusion (refine)")
                    diffs.scatter_(1, chosen, exact)
        # outside inference mode: the map is an ordinary tensor (a caller may use it in autograd)
        return ops.occlusion_accumulate(diffs.clone(), shape, window, stride).to(inputs.dtype)

    def _plan(self, x, window, stride, field_threshold, additional_forward_args):
        if additional_forward_args is not None:
            return None, None, "additional_forward_args are not planned (the graph is traced with one input)"
        return _incremental.plan_for(self._planned, x, window, stride, field_threshold)

    @property
    def _planned(self) -> nn.Module:
        # a wrapper computing the same function (tuning.TunedForward) names what to plan
        return getattr(self.model, "planned_model", self.model)

    @in_eval_mode
    def incremental_plan(self, inputs: torch.Tensor, sliding_window_shapes: Window, strides: Optional[Window] = None,
                         field_threshold: Optional[float] = None):
        """The incremental plan `attribute` would use for these arguments, or None and
        the reason the model cannot be planned: ``(plan, reason)``. ``plan.flop_ratio``
        is full re-inference's multiply-adds over the plan's; ``plan.report()`` lists
        every node with the patch it recomputes."""
        c = inputs.shape[1]
        window = _triple(sliding_window_shapes, "sliding_window_shapes", c, c)
        stride = _triple(1 if strides is None else strides, "strides", c, 1)
        with torch.inference_mode():
            plan, _, reason = self._plan(inputs.detach().contiguous(), window, stride, field_threshold, None)
        return plan, reason
