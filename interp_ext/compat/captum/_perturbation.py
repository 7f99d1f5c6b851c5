"""Captum's ``Occlusion``, ``ShapleyValueSampling`` and ``ShapleyValues`` over
interp_ext's native batch ops.

Perturbed copies of a floating-point input with at most 3 dimensions after the batch one
(images ``(N, C, H, W)``, sequences, vectors: padded to ``(N, C, H, W)`` with unit
dimensions) are built by the native ``occlusion_batch`` / ``feature_batch`` kernels, and
occlusion's per-window score drops are spread back by the native
``occlusion_accumulate`` (a summed-area gather: no masks, no per-window temporaries).
Integer and bool inputs and inputs of more dimensions take a plain-torch path with the
same numbers.
"""
from __future__ import annotations

import itertools
import math
import warnings
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.futures import Future

from ... import ops
from ._common import (
    Baselines,
    CaptumArgumentError,
    CaptumTypeError,
    PerturbationAttribution,
    TargetType,
    TensorOrTuple,
    args_tuple,
    baselines_tuple,
    broadcast_baseline,
    check_target,
    expand_args,
    expand_target,
    finish,
    format_output,
    forward_scores,
    input_tuple,
    progress,
    public,
    repeat_batch,
)

_NATIVE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_ppe(perturbations_per_eval: Any) -> None:
    if not isinstance(perturbations_per_eval, int) or isinstance(perturbations_per_eval, bool) or perturbations_per_eval < 1:
        raise CaptumArgumentError(f"perturbations_per_eval must be an int >= 1, got {perturbations_per_eval!r}")


def _as_4d(x: Tensor) -> Tensor:
    """(N, *rest) with len(rest) <= 3 -> (N, C, H, W), unit dimensions in front."""
    return x.reshape(x.shape[0], *([1] * (4 - x.dim())), *x.shape[1:])


def _native(x: Tensor) -> bool:
    return x.dtype in _NATIVE_DTYPES and x.dim() <= 4 and x.numel() > 0


def _batch_outputs(out: Tensor, copies: int, numel: int, base_rows: int, perturbations_per_eval: int) -> Tensor:
    """A forward's output for ``copies`` stacked copies of the batch -> (copies, numel)."""
    if out.numel() != copies * numel or (copies > 1 and (out.dim() == 0 or out.shape[0] != copies * base_rows)):
        raise CaptumArgumentError(
            f"perturbations_per_eval: forward_func returned shape {tuple(out.shape)} for {copies} stacked copies of the "
            f"batch, where one batch gives {numel} value(s) in {base_rows} row(s); with perturbations_per_eval > 1 its "
            "output must grow with the batch (one row per sample). A forward that returns one value for the whole "
            "batch needs perturbations_per_eval=1")
    return out.reshape(copies, numel)


# ---- Occlusion ------------------------------------------------------------------------


def _per_input_shapes(value: Any, xs: Sequence[Tensor], name: str, allow_int: bool) -> list:
    """Captum's per-input forms: one spec (for a single input) or a tuple with one per input."""
    if name == "strides":
        if value is None:
            value = tuple(1 for _ in xs)
        elif len(xs) == 1 and not (isinstance(value, tuple) and len(value) == 1):
            value = (value,)
    elif isinstance(value, tuple) and (len(value) == 0 or isinstance(value[0], int)) and len(xs) == 1:
        value = (value,)
    if not isinstance(value, tuple) or len(value) != len(xs):
        raise CaptumArgumentError(
            f"{name}: give one entry per input tensor ({len(xs)}), as a tuple, got {value!r}")
    out = []
    for i, (v, x) in enumerate(zip(value, xs)):
        rank = x.dim() - 1
        where = f"{name}[{i}]" if len(xs) > 1 else name
        if allow_int and isinstance(v, int) and not isinstance(v, bool):
            v = (v,) * rank
        if not (isinstance(v, tuple) and len(v) == rank and all(isinstance(e, int) and not isinstance(e, bool) for e in v)):
            raise CaptumArgumentError(
                f"{where} must be a tuple of {rank} int(s) (one per input dimension after the batch one, input shape "
                f"{tuple(x.shape)}){' or an int' if allow_int else ''}, got {v!r}")
        out.append(tuple(v))
    return out


class _OcclusionPlan:
    """The windows of one input tensor and how its occluded copies are built."""

    def __init__(self, x: Tensor, window: tuple, stride: tuple, baseline: Any, index: int, multi: bool):
        self.x, self.window, self.stride = x, window, stride
        self.n, self.rest = x.shape[0], tuple(x.shape[1:])
        where = f"[{index}]" if multi else ""
        for d, (size, w, s) in enumerate(zip(self.rest, window, stride)):
            if not 0 < w <= size:
                raise CaptumArgumentError(f"sliding_window_shapes{where}: dimension {d + 1} of the window is {w}; it must "
                                          f"be in [1, {size}] (the input's size there, input shape {tuple(x.shape)})")
            if s <= 0:
                raise CaptumArgumentError(f"strides{where} must be positive, got {stride}")
            if s > w and size != w:
                raise CaptumArgumentError(
                    f"strides{where}: the stride {s} along dimension {d + 1} exceeds the window's {w}, which would leave "
                    "elements no window covers")
        self.counts = tuple((size - w + s - 1) // s + 1 for size, w, s in zip(self.rest, window, stride))
        self.total = math.prod(self.counts) if x.numel() else 0
        if isinstance(baseline, Tensor):
            b = broadcast_baseline(baseline, x, f"baselines{where}")
            # a floating-point input keeps its dtype; an integer or bool one takes the baseline's where wider
            self.dtype = x.dtype if x.is_floating_point() else torch.result_type(x, b)
        else:
            self.dtype = torch.result_type(x, baseline)
            b = torch.full((1,) * x.dim(), baseline, dtype=self.dtype, device=x.device)
        self.native = _native(x) and self.dtype == x.dtype
        self.base = b.to(self.dtype).expand(b.shape[0], *self.rest)
        self.grid3 = len(self.rest) <= 3
        if self.grid3:
            pad = (1,) * (3 - len(self.rest))
            self.window3, self.stride3, self.shape3 = pad + window, pad + stride, pad + self.rest
        self._buffer: Optional[Tensor] = None
        self._repeated: Optional[Tensor] = None

    def slices(self, index: int) -> tuple:
        """The element ranges of window ``index`` (row-major over the window grid, as the
        native ops number them)."""
        origin = []
        for c in reversed(self.counts):
            origin.append(index % c)
            index //= c
        return tuple(slice(o * s, o * s + w) for o, s, w in zip(reversed(origin), self.stride, self.window))

    def build(self, start: int, count: int, capacity: int) -> Tensor:
        """Copies ``start .. start + count - 1`` of the input, each with its window set to
        the baseline: ``(count * N, *rest)``, copy-major."""
        n = self.n
        if self.native:
            if self._buffer is None:
                self._buffer = torch.empty((capacity * n, *self.shape3), dtype=self.x.dtype, device=self.x.device)
                self._x4 = _as_4d(self.x.contiguous())
                self._b4 = _as_4d(self.base.to(self.x.dtype).contiguous())
            out = ops.occlusion_batch(self._x4, self._b4, self.window3, self.stride3, start, count,
                                      out=self._buffer[: count * n])
            return out.view(count * n, *self.rest)
        if self._repeated is None:
            self._repeated = repeat_batch(self.x.to(self.dtype), capacity)
        out = self._repeated[: count * n].clone().view(count, n, *self.rest)
        for k in range(count):
            sl = (slice(None), *self.slices(start + k))
            out[k][sl] = self.base[sl]
        return out.view(count * n, *self.rest)

    def accumulate(self, diffs: Tensor) -> Tensor:
        """Score drops ``(P, R)`` -> each element's mean over the windows covering it,
        ``(R, *rest)`` (Captum: the sum over windows divided by the number of them)."""
        rows = diffs.shape[1]
        if self.total == 0:
            return torch.zeros((rows, *self.rest), dtype=torch.float32, device=self.x.device)
        if self.grid3:
            acc = ops.occlusion_accumulate(diffs.t().contiguous(), self.shape3, self.window3, self.stride3)
            return acc.reshape(rows, *self.rest).float()
        total = torch.zeros((rows, *self.rest), dtype=diffs.dtype, device=diffs.device)
        count = torch.zeros(self.rest, dtype=diffs.dtype, device=diffs.device)
        for p in range(self.total):
            sl = self.slices(p)
            total[(slice(None), *sl)] += diffs[p].view(rows, *([1] * len(self.rest)))
            count[sl] += 1
        return (total / count).float()


class Occlusion(PerturbationAttribution):
    """Captum's ``Occlusion``: slide a window over each input, replace it by the baseline,
    and give every element the mean change of the output over the windows that cover it.

    Same signature, defaults, argument forms and numbers as Captum's (returns float32 as
    Captum does; a tensor for a tensor input, a tuple for a tuple). The occluded copies
    of floating-point inputs of up to 3 dimensions after the batch one come from the
    native ``occlusion_batch`` kernel into one reused buffer, and the spread of the
    per-window score drops from the native ``occlusion_accumulate`` (no full-size masks);
    ``perturbations_per_eval`` bounds the memory as in Captum. A tuple input's windows are
    evaluated one input tensor at a time (the count of model calls can differ from
    Captum's by one per extra tensor; the numbers do not).
    """

    def __init__(self, forward_func: Callable) -> None:
        super().__init__(forward_func)

    @public
    def attribute(
        self,
        inputs: TensorOrTuple,
        sliding_window_shapes: Union[tuple, tuple[tuple, ...]],
        strides: Union[None, int, tuple] = None,
        baselines: Baselines = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
    ) -> TensorOrTuple:
        """Occlusion attributions of a tensor or a tuple of tensors (batch first): one
        float32 tensor per input, of its shape.

        ``sliding_window_shapes``: the window, one size per dimension after the batch (a
        tuple of them for a tuple input); ``strides``: None (1), an int or a tuple per
        dimension; ``baselines``: what a window is replaced by (None: zeros; a number or a
        broadcastable tensor). ``perturbations_per_eval`` occluded copies per forward;
        ``show_progress``: a tqdm bar on stderr. Bad values raise `CaptumArgumentError` /
        `CaptumTypeError` naming the argument."""
        xs, is_tuple = input_tuple(inputs)
        windows = _per_input_shapes(sliding_window_shapes, xs, "sliding_window_shapes", allow_int=False)
        stride_list = _per_input_shapes(strides, xs, "strides", allow_int=True)
        _check_ppe(perturbations_per_eval)
        bases = baselines_tuple(baselines, xs)
        plans = [_OcclusionPlan(x, w, s, b, i, len(xs) > 1) for i, (x, w, s, b) in enumerate(zip(xs, windows, stride_list, bases))]
        n = xs[0].shape[0]
        check_target(target, n)
        args = args_tuple(additional_forward_args)
        ppe = perturbations_per_eval
        bar = progress(show_progress, f"{self.get_name()} attribution",
                       1 + sum(-(-p.total // ppe) for p in plans))
        try:
            with torch.no_grad():
                # the model never gets the caller's tensors (a forward may write its input)
                initial = forward_scores(self.forward_func, [x.clone() for x in xs], target, args, allow_number=True)
                bar.update()
                n_outputs = initial.numel()
                flat = initial.reshape(1, -1)
                base_rows = initial.shape[0] if initial.dim() else 1
                repeated: dict[int, tuple[Tensor, int]] = {}  # the other inputs' copies, and their version
                attributions = []
                for j, plan in enumerate(plans):
                    diffs = torch.empty((plan.total, n_outputs), dtype=torch.float64, device=initial.device)
                    capacity = min(ppe, plan.total)
                    for start in range(0, plan.total, ppe):
                        count = min(ppe, plan.total - start)
                        batch = []
                        for i, x in enumerate(xs):
                            if i == j:
                                batch.append(plan.build(start, count, capacity))
                            else:  # made again if too short or written by the forward
                                if i not in repeated or repeated[i][0].shape[0] < count * n or \
                                        repeated[i][0]._version != repeated[i][1]:
                                    rep = repeat_batch(x, capacity) if capacity > 1 else x.clone()
                                    repeated[i] = (rep, rep._version)
                                batch.append(repeated[i][0][: count * n])
                        out = forward_scores(self.forward_func, batch, expand_target(target, count),
                                             expand_args(args, count), allow_number=True)
                        out = _batch_outputs(out, count, n_outputs, base_rows, ppe)
                        diffs[start : start + count] = (flat - out).to(torch.float64)
                        bar.update()
                    attributions.append(plan.accumulate(diffs))
            finish(bar)
        finally:
            bar.close()
        return format_output(is_tuple, attributions)

    def attribute_future(self, *args: Any, **kwargs: Any) -> None:
        """Not implemented for occlusion (as in Captum): a ``NotImplementedError``."""
        raise NotImplementedError("attribute_future is not implemented for Occlusion")


# ---- Shapley value sampling -----------------------------------------------------------


def _shapley_masks(feature_mask: Any, xs: Sequence[Tensor]) -> tuple[list[Tensor], int]:
    """Captum's feature-mask forms -> one int64 mask per input with the input's number of
    dimensions (leading unit dimensions added), ids shared across inputs; and F."""
    masks = []
    if feature_mask is None:
        offset = 0
        for x in xs:
            numel = math.prod(x.shape[1:])
            masks.append(torch.arange(offset, offset + numel, device=x.device).reshape(1, *x.shape[1:]))
            offset += numel
    else:
        given = feature_mask if isinstance(feature_mask, tuple) else (feature_mask,)
        if len(given) != len(xs):
            raise CaptumArgumentError(f"feature_mask: give one mask per input tensor ({len(xs)}), got {len(given)}")
        for i, (m, x) in enumerate(zip(given, xs)):
            where = f"feature_mask[{i}]" if len(xs) > 1 else "feature_mask"
            if not isinstance(m, Tensor):
                raise CaptumTypeError(f"{where} must be an integer tensor, got {type(m).__name__}")
            if m.is_floating_point() or m.is_complex():
                raise CaptumTypeError(f"{where} must be an integer tensor of feature ids, got dtype {m.dtype}")
            if m.dim() > x.dim() or any(ms not in (1, xs_) for ms, xs_ in zip(reversed(m.shape), reversed(x.shape))):
                raise CaptumArgumentError(
                    f"{where}: shape {tuple(m.shape)} does not broadcast to the input's shape {tuple(x.shape)}")
            m = m.to(device=x.device, dtype=torch.long).reshape((1,) * (x.dim() - m.dim()) + tuple(m.shape))
            if m.numel() and int(m.min()) < 0:
                raise CaptumArgumentError(f"{where}: feature ids must be >= 0, got {int(m.min())}")
            masks.append(m)
    sizes = [int(m.max()) + 1 for m in masks if m.numel()]
    if not sizes:
        raise CaptumArgumentError("feature_mask: no features (every input is empty)")
    return masks, max(sizes)


class _FeaturePlan:
    """How the copies of one input tensor with a given set of features present are built."""

    def __init__(self, x: Tensor, mask: Tensor, baseline: Any, index: int, multi: bool):
        where = f"baselines[{index}]" if multi else "baselines"
        self.x, self.n = x, x.shape[0]
        if isinstance(baseline, Tensor):
            b = broadcast_baseline(baseline, x, where)
            self.dtype = torch.result_type(x, b)
        else:  # a number fills the input's dtype (as Captum's torch.full_like)
            b = torch.full((1,) * x.dim(), baseline, device=x.device).to(x.dtype)
            self.dtype = x.dtype
        self.base = b.to(self.dtype)
        self.mask = mask
        self.native = _native(x) and self.dtype == x.dtype
        self._buffer: Optional[Tensor] = None

    def baseline_batch(self) -> Tensor:
        return self.base.expand(self.x.shape).clone()  # the model gets its own copy, whatever it does to it

    def build(self, present: Tensor, capacity: int) -> Tensor:
        """``(B * N, *rest)`` copies, copy ``b`` holding the input where ``present[b, id]``
        for the element's feature id and the baseline elsewhere."""
        count = present.shape[0]
        if count == 1:
            return self._build_one(present[0])
        if self.native:
            if self._buffer is None:
                x4 = _as_4d(self.x.contiguous())
                self._x4 = x4
                self._b4 = _as_4d(self.base.expand(self.base.shape[0], *self.x.shape[1:])).contiguous()
                m4 = _as_4d(self.mask)
                self._m4 = m4.expand(m4.shape[0], m4.shape[1], x4.shape[2], x4.shape[3]).contiguous()
                self._buffer = torch.empty((capacity * self.n, *x4.shape[1:]), dtype=x4.dtype, device=x4.device)
            out = ops.feature_batch(self._x4, self._b4, self._m4, present, out=self._buffer[: count * self.n])
            return out.view(count * self.n, *self.x.shape[1:])
        keep = present[:, self.mask]  # (B, m0, *mask_rest)
        out = torch.where(keep, self.x.to(self.dtype).unsqueeze(0), self.base.unsqueeze(0))
        return out.expand(count, *self.x.shape).reshape(count * self.n, *self.x.shape[1:])

    def _build_one(self, present: Tensor) -> Tensor:
        """One copy (``perturbations_per_eval=1``), made from the previous one: only the
        elements of the features switched on or off since are rewritten (one feature's
        worth between consecutive states of an order, instead of the whole input). A
        forward that changed the copy in place is detected (the version counter) and the
        copy is then built afresh."""
        if not hasattr(self, "_ids"):
            self._ids = self.mask.expand(self.x.shape).reshape(-1)
            self._order = self._ids.argsort(stable=True)
            self._counts = torch.bincount(self._ids, minlength=present.shape[0]).tolist()
            self._starts = [0]
            for c in self._counts[:-1]:
                self._starts.append(self._starts[-1] + c)
            self._x_flat = self.x.to(self.dtype).reshape(-1)
            self._b_flat = self.base.expand(self.x.shape).reshape(-1)
            self._features: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
            self._cur = torch.empty_like(self._x_flat)
            self._cur_present = None
        cur = self._cur
        changed = None
        if self._cur_present is not None and cur._version == self._cur_version:
            changed = (present != self._cur_present).nonzero().flatten().tolist()
            if sum(self._counts[f] for f in changed) * 3 > cur.numel():
                changed = None
        if changed is None:
            torch.where(present[self._ids], self._x_flat, self._b_flat, out=cur)
        elif changed:
            on = present.tolist()
            for f in changed:
                if f not in self._features:
                    idx = self._order[self._starts[f] : self._starts[f] + self._counts[f]]
                    self._features[f] = (idx, self._x_flat[idx], self._b_flat[idx])
                idx, x_vals, b_vals = self._features[f]
                cur.index_put_((idx,), x_vals if on[f] else b_vals)
        self._cur_present = present.clone()
        self._cur_version = cur._version
        return cur.view(self.x.shape)


def _spread(phi: Tensor, output_shape: tuple, mask: Tensor, rest: tuple) -> Tensor:
    """Per-feature values ``(*output_shape, F)`` -> ``(*output_shape, *rest)``: every element
    its feature's value (the mask's first dimension lines up with the output's first)."""
    lead = len(output_shape)
    idx = mask.reshape(mask.shape[0], *([1] * (lead - 1)), *mask.shape[1:]).expand(*output_shape, *rest)
    vals = phi.reshape(*output_shape, *([1] * len(rest)), phi.shape[-1]).expand(*output_shape, *rest, phi.shape[-1])
    return vals.gather(-1, idx.unsqueeze(-1)).squeeze(-1)


class ShapleyValueSampling(PerturbationAttribution):
    """Captum's ``ShapleyValueSampling``: Shapley values of features (groups of input
    elements given by ``feature_mask``), estimated over ``n_samples`` random orders in
    which the features are switched from the baseline to the input.

    Same signature, defaults, argument forms and numbers as Captum's (float32 results; a
    forward returning one scalar for the whole batch is handled as Captum's aggregate
    mode), with the same permutations for the same ``torch.manual_seed``: they are drawn
    up front, one ``torch.randperm`` each, in Captum's order (a forward that itself draws
    random numbers therefore sees another stream than under Captum).

    Work saved: the baseline and the full input are evaluated once, not once per order,
    and every distinct set of present features once however many orders pass through it
    (at most ``n_samples * (F - 1) + 2`` evaluations of the batch, not
    ``n_samples * F + 1``; ``2 ** F`` for the exact `ShapleyValues`, not ``F * F!``); steps
    adding a feature no mask holds are not evaluated; the copies of all orders are stacked
    ``perturbations_per_eval`` at a time, built by the native ``feature_batch`` kernel for
    floating-point inputs of up to 3 dimensions after the batch, and with
    ``perturbations_per_eval=1`` each copy is the previous one with one feature's elements
    rewritten. (A forward that is not deterministic, e.g. with dropout in train mode, is
    therefore called fewer times than under Captum.) The model never gets the caller's
    tensors, so a forward that writes its input changes nothing.
    """

    def __init__(self, forward_func: Callable) -> None:
        super().__init__(forward_func)

    @public
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: Baselines = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask: Union[None, Tensor, tuple[Tensor, ...]] = None,
        n_samples: int = 25,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
    ) -> TensorOrTuple:
        """Shapley value estimates of a tensor or a tuple of tensors (batch first): one
        float32 tensor per input, of its shape, every element holding its feature's value.

        ``feature_mask``: integer feature ids broadcastable to each input (ids shared across
        a tuple's tensors); None: every element its own feature. ``baselines`` as in
        `Occlusion`; ``n_samples`` random orders; ``perturbations_per_eval`` copies per
        forward. Bad values raise `CaptumArgumentError` / `CaptumTypeError`."""
        return self._attribute(inputs, baselines, target, additional_forward_args, feature_mask, n_samples,
                               perturbations_per_eval, show_progress, allow_future=False)

    def attribute_future(
        self,
        inputs: TensorOrTuple,
        baselines: Baselines = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask: Union[None, Tensor, tuple[Tensor, ...]] = None,
        n_samples: int = 25,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
    ) -> Future:
        """`attribute` for a forward that returns ``torch.futures.Future`` values: each is
        waited for, and the result comes back as a completed Future."""
        result = self._attribute(inputs, baselines, target, additional_forward_args, feature_mask, n_samples,
                                 perturbations_per_eval, show_progress, allow_future=True)
        fut: Future = Future()
        fut.set_result(result)
        return fut

    # the orders, in blocks of at most `block` permutations (Captum draws one randperm each)
    def _orders(self, num_features: int, n_samples: int, block: int) -> Iterator[Tensor]:
        done = 0
        while done < n_samples:
            k = min(block, n_samples - done)
            yield torch.stack([torch.randperm(num_features) for _ in range(k)])
            done += k

    def _n_orders(self, num_features: int, n_samples: int) -> int:
        return n_samples

    def _attribute(self, inputs, baselines, target, additional_forward_args, feature_mask, n_samples,
                   perturbations_per_eval, show_progress, *, allow_future: bool) -> TensorOrTuple:
        xs, is_tuple = input_tuple(inputs)
        _check_ppe(perturbations_per_eval)
        if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
            raise CaptumArgumentError(f"n_samples must be an int >= 1, got {n_samples!r}")
        bases = baselines_tuple(baselines, xs)
        masks, num_features = _shapley_masks(feature_mask, xs)
        n = xs[0].shape[0]
        check_target(target, n)
        args = args_tuple(additional_forward_args)
        plans = [_FeaturePlan(x, m, b, i, len(xs) > 1) for i, (x, m, b) in enumerate(zip(xs, masks, bases))]
        device = xs[0].device
        missing = torch.ones(num_features, dtype=torch.bool)
        for m in masks:
            missing[m.unique().cpu()] = False
        if bool(missing.any()):
            warnings.warn("Feature mask is missing some integers between 0 and num_features, for optimal performance, "
                          "make sure each consecutive integer corresponds to a feature.", stacklevel=3)
        ppe = perturbations_per_eval
        orders = self._n_orders(num_features, n_samples)
        evals_per_order = (num_features - 1) if num_features > 1 else 0
        bar = progress(show_progress, f"{self.get_name()} attribution", 2 + -(-orders * evals_per_order // ppe))

        def run(batch: Sequence[Tensor], copies: int) -> Tensor:
            return forward_scores(self.forward_func, batch, expand_target(target, copies), expand_args(args, copies),
                                  allow_future=allow_future, allow_number=True)

        try:
            with torch.no_grad():
                base_out = run([p.baseline_batch() for p in plans], 1)
                aggregate = base_out.dim() == 0 or (n > 1 and base_out.numel() == 1)
                base_out = base_out.reshape(1) if base_out.dim() == 0 else base_out
                if aggregate:
                    if ppe != 1:
                        raise CaptumArgumentError("perturbations_per_eval must be 1 when forward_func returns one "
                                                  f"scalar for the whole batch, got {ppe}")
                    for i, m in enumerate(masks):
                        if m.shape[0] != 1:
                            raise CaptumArgumentError(
                                f"feature_mask{f'[{i}]' if len(masks) > 1 else ''}: one mask per sample is not possible "
                                "when forward_func returns one scalar for the whole batch; give a mask with a batch of 1")
                output_shape = tuple(base_out.shape)
                numel = base_out.numel()
                for m in masks:
                    if m.shape[0] not in (1, output_shape[0]):
                        raise CaptumArgumentError(
                            f"feature_mask: a per-sample mask (first dimension {m.shape[0]}) needs one output row per "
                            f"sample, but forward_func returns shape {output_shape}")
                base_rows = output_shape[0]
                base_flat = base_out.reshape(numel).double()
                clean = run([x.clone() for x in xs], 1)  # never the caller's tensors: a forward may write its input
                clean = clean.reshape(1) if clean.dim() == 0 else clean
                if clean.numel() != numel:
                    raise CaptumArgumentError(f"forward_func returned {tuple(clean.shape)} for the inputs but "
                                              f"{output_shape} for the baselines")
                clean_flat = clean.reshape(numel).double()
                bar.update(2)
                phi = torch.zeros((numel, num_features), dtype=torch.float64, device=device)
                missing_d = missing.to(device)
                cache = _SubsetCache(num_features, device)
                left = orders
                for perms in self._orders(num_features, n_samples, max(1, (1 << 22) // num_features ** 2)):
                    perms = perms.to(device)
                    left -= perms.shape[0]
                    self._accumulate_block(perms, missing_d, plans, run, ppe, numel, base_rows, base_flat, clean_flat,
                                           phi, bar, cache, left)
                phi /= orders
                phi_f = phi.float()
                result = [_spread(phi_f.reshape(*output_shape, num_features), output_shape, m, tuple(x.shape[1:]))
                          for m, x in zip(masks, xs)]
            finish(bar)
        finally:
            bar.close()
        return format_output(is_tuple, result)

    def _accumulate_block(self, perms: Tensor, missing: Tensor, plans, run, ppe: int, numel: int, base_rows: int,
                          base_flat: Tensor, clean_flat: Tensor, phi: Tensor, bar, cache: "_SubsetCache",
                          orders_left: int) -> None:
        """Add the feature gains of a block of orders to ``phi`` (numel, F).

        Order ``s`` switches its features on one at a time; state ``t`` (1 <= t < F) has the
        first ``t`` of them on. The gain of the feature switched on at state ``t`` is
        ``f(state t) - f(state t - 1)`` (state 0: the baseline; state F: the input). A
        feature no mask holds changes nothing: its state is not evaluated (gain 0). Each
        distinct set of features on is evaluated once (`_SubsetCache`), however many
        orders pass through it.
        """
        s_count, num_features = perms.shape
        last_feature = perms[:, num_features - 1]
        if num_features > 1:
            evaluated = ~missing[perms[:, : num_features - 1]]  # (S, F-1): state t = column + 1
            pairs = evaluated.nonzero()  # row-major: by order, then by state
        else:
            evaluated = torch.zeros((s_count, 0), dtype=torch.bool, device=perms.device)
            pairs = torch.zeros((0, 2), dtype=torch.long, device=perms.device)
        # orders with no evaluated state: the whole gain goes to their last feature
        none = ~evaluated.any(dim=1)
        if bool(none.any()):
            phi.index_add_(1, last_feature[none], (clean_flat - base_flat)[:, None].expand(numel, int(none.sum())))
        total = pairs.shape[0]
        if total == 0:
            return
        orders, states = pairs[:, 0], pairs[:, 1] + 1
        present = (perms.argsort(dim=1)[orders] < states[:, None]) & ~missing
        rows = cache.rows(present, plans, run, ppe, numel, base_rows, bar, orders_left)
        # the gains, a segment of states at a time (bounded memory for wide outputs)
        segment = max(1, (1 << 22) // max(1, numel))
        carry_order, carry_out = -1, None
        for lo in range(0, total, segment):
            hi = min(total, lo + segment)
            o = orders[lo:hi]
            out = cache.outputs(rows[lo:hi])
            count = hi - lo
            prev = base_flat.expand(count, numel).clone()
            same = torch.zeros(count, dtype=torch.bool, device=out.device)
            same[1:] = o[1:] == o[:-1]
            prev[same] = out[:-1][same[1:]]
            if carry_out is not None and int(o[0]) == carry_order:
                prev[0] = carry_out
            phi.index_add_(1, perms[o, states[lo:hi] - 1], (out - prev).t())
            nxt = int(orders[hi]) if hi < total else -1
            last = o != torch.cat([o[1:], torch.tensor([nxt], device=o.device)])
            # each order's last evaluated state: the rest of the gain (to the input) goes to its last feature
            phi.index_add_(1, last_feature[o[last]], (clean_flat[None] - out[last]).t())
            carry_order, carry_out = int(o[-1]), out[-1]


def _first_occurrence(uniq: Tensor, inverse: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.unique``'s values reordered by where each first appears (consecutive states
    of an order then follow each other: one feature apart)."""
    first = torch.full((uniq.shape[0],), inverse.numel(), dtype=torch.long, device=inverse.device)
    first.scatter_reduce_(0, inverse, torch.arange(inverse.numel(), device=inverse.device), "amin")
    order = first.argsort()
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return uniq[order], rank[inverse]


class _SubsetCache:
    """The model's output for each distinct set of features present, evaluated once:
    copies for the sets not seen yet are built and run ``perturbations_per_eval`` at a
    time; outputs are kept in the forward's dtype."""

    def __init__(self, num_features: int, device: torch.device):
        self.num_features = num_features
        self.packable = num_features <= 62
        self.weights = (1 << torch.arange(num_features, device=device, dtype=torch.long)) if self.packable else None
        self.index: dict = {}
        self.store: list[Tensor] = []
        self._table: Optional[Tensor] = None

    def rows(self, present: Tensor, plans, run, ppe: int, numel: int, base_rows: int, bar, orders_left: int) -> Tensor:
        """For each row of ``present`` (M, F), the row of its output in the store."""
        if self.packable:
            keys = (present.long() * self.weights).sum(dim=1)
            uniq, inverse = _first_occurrence(*torch.unique(keys, return_inverse=True))
            uniq_keys = uniq.tolist()
            new = [i for i, k in enumerate(uniq_keys) if k not in self.index]
            uniq_present = None
        else:  # wider masks: distinct rows within this block
            uniq_present, inverse = _first_occurrence(*torch.unique(present, dim=0, return_inverse=True))
            uniq_keys = list(range(len(self.store_rows()), len(self.store_rows()) + uniq_present.shape[0]))
            new = list(range(uniq_present.shape[0]))
        if new:
            if uniq_present is None:
                bits = torch.tensor([uniq_keys[i] for i in new], dtype=torch.long, device=present.device)
                todo = (bits[:, None] & self.weights[None]) != 0
            else:
                todo = uniq_present
            chunks = -(-todo.shape[0] // ppe)
            if hasattr(bar, "total"):
                per_order = self.num_features - 1
                bar.total = bar.n + chunks + -(-orders_left * per_order // ppe)
                bar.refresh()
            first = len(self.store_rows())
            for c0 in range(0, todo.shape[0], ppe):
                chunk = todo[c0 : c0 + ppe]
                count = chunk.shape[0]
                batch = [p.build(chunk, min(ppe, todo.shape[0])) for p in plans]
                self.store.append(_batch_outputs(run(batch, count), count, numel, base_rows, ppe))
                bar.update()
            self._table = None
            for j, i in enumerate(new):
                self.index[uniq_keys[i]] = first + j
        mapping = torch.tensor([self.index[k] for k in uniq_keys], dtype=torch.long, device=present.device)
        return mapping[inverse]

    def store_rows(self) -> Tensor:
        if self._table is None:
            self._table = torch.cat(self.store) if self.store else torch.zeros((0, 1))
        return self._table

    def outputs(self, rows: Tensor) -> Tensor:
        return self.store_rows()[rows].double()


class ShapleyValues(ShapleyValueSampling):
    """Captum's ``ShapleyValues``: exact Shapley values, every order of the features
    (``F!`` of them, in ``itertools.permutations`` order); warns from 10 features on.
    Same numbers as Captum's; the work saved as in `ShapleyValueSampling`."""

    @public
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: Baselines = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask: Union[None, Tensor, tuple[Tensor, ...]] = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
    ) -> TensorOrTuple:
        """Exact Shapley values over every order of the features; arguments and result as
        `ShapleyValueSampling.attribute` (without ``n_samples``)."""
        self._warn_if_large(inputs, feature_mask)
        return self._attribute(inputs, baselines, target, additional_forward_args, feature_mask, 1,
                               perturbations_per_eval, show_progress, allow_future=False)

    def attribute_future(
        self,
        inputs: TensorOrTuple,
        baselines: Baselines = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask: Union[None, Tensor, tuple[Tensor, ...]] = None,
        n_samples: int = 25,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
    ) -> Future:
        """`attribute` for a forward returning futures (``n_samples`` is ignored, as in
        Captum, where this signature comes from the sampling class: every order is used)."""
        self._warn_if_large(inputs, feature_mask)
        result = self._attribute(inputs, baselines, target, additional_forward_args, feature_mask, 1,
                                 perturbations_per_eval, show_progress, allow_future=True)
        fut: Future = Future()
        fut.set_result(result)
        return fut

    @staticmethod
    def _warn_if_large(inputs: Any, feature_mask: Any) -> None:
        try:
            xs, _ = input_tuple(inputs)
            _, f = _shapley_masks(feature_mask, xs)
        except (ValueError, TypeError):
            return  # the real call reports it
        if f >= 10:
            warnings.warn(f"ShapleyValues: {f} features means {math.factorial(f)} orders of the features, which will "
                          "likely be very computationally expensive; consider ShapleyValueSampling instead.", stacklevel=3)

    def _n_orders(self, num_features: int, n_samples: int) -> int:
        return math.factorial(num_features)

    def _orders(self, num_features: int, n_samples: int, block: int) -> Iterator[Tensor]:
        it = itertools.permutations(range(num_features))
        while True:
            chunk = list(itertools.islice(it, block))
            if not chunk:
                return
            yield torch.tensor(chunk, dtype=torch.long)
