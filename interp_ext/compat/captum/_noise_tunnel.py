"""Captum's ``NoiseTunnel``: SmoothGrad, SmoothGrad-squared and VarGrad around any of
these methods."""
from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import Tensor

from ._common import (
    Attribution,
    CaptumArgumentError,
    CaptumTypeError,
    GradientAttribution,
    TensorOrTuple,
    args_tuple,
    baselines_tuple,
    check_baselines_like_inputs,
    expand_args,
    expand_target,
    format_output,
    input_tuple,
    public,
)

NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")


def _expand_kwargs(kwargs: dict, xs: tuple[Tensor, ...], copies: int, draw_baseline_from_distrib: bool) -> dict:
    """The method's per-sample arguments for ``copies`` noisy copies of each sample (each
    sample's copies side by side, as the noisy batch is laid out)."""
    out = dict(kwargs)
    if out.get("additional_forward_args") is not None:
        out["additional_forward_args"] = expand_args(args_tuple(out["additional_forward_args"]), copies, interleave=True)
    if "target" in out:
        out["target"] = expand_target(out["target"], copies, interleave=True)
    if "baselines" in out:
        bases = baselines_tuple(out["baselines"], xs)
        if draw_baseline_from_distrib:
            import numpy as np

            n = xs[0].shape[0]
            for i, (x, b) in enumerate(zip(xs, bases)):
                if isinstance(b, Tensor) and b.shape[1:] != x.shape[1:]:
                    raise CaptumArgumentError(f"baselines: with draw_baseline_from_distrib the baseline samples must "
                                              f"have the input's sample shape {tuple(x.shape[1:])}, got {tuple(b.shape)}")
            bases = tuple(b[np.random.choice(b.shape[0], copies * n).tolist()] if isinstance(b, Tensor) else b
                          for b in bases)
        else:
            check_baselines_like_inputs(xs, bases)
            bases = tuple(b.repeat_interleave(copies, dim=0)
                          if isinstance(b, Tensor) and b.shape[0] == x.shape[0] and b.shape[0] > 1 else b
                          for x, b in zip(xs, bases))
        out["baselines"] = bases
    mask = out.get("feature_mask")
    if mask is not None:
        is_tuple = isinstance(mask, tuple)
        masks = tuple(m.repeat_interleave(copies, dim=0) if m.shape[0] > 1 else m for m in (mask if is_tuple else (mask,)))
        out["feature_mask"] = masks if is_tuple else masks[0]
    return out


class NoiseTunnel(Attribution):
    """Captum's ``NoiseTunnel``: the wrapped method's attributions over ``nt_samples``
    copies of each input with Gaussian noise of standard deviation ``stdevs`` (input
    units; one per input tensor as a tuple), reduced by ``nt_type``: ``"smoothgrad"``
    (mean), ``"smoothgrad_sq"`` (mean of squares) or ``"vargrad"`` (variance);
    ``nt_samples_batch_size`` copies per call of the method. The noise is drawn from the
    global generator as Captum draws it (same ``torch.manual_seed``, same noise).
    ``return_convergence_delta=True`` (for a method with a delta) also returns the delta
    of every noisy copy. Other keyword arguments go to the method's ``attribute``."""

    def __init__(self, attribution_method: Any) -> None:
        if not hasattr(attribution_method, "attribute") or not hasattr(attribution_method, "forward_func"):
            raise CaptumTypeError("attribution_method must be an attribution object (with forward_func and attribute), "
                                  f"got {type(attribution_method).__name__}")
        self.attribution_method = attribution_method
        has_delta = getattr(attribution_method, "has_convergence_delta", None)
        self.is_delta_supported = bool(has_delta()) if callable(has_delta) else False
        self._multiply_by_inputs = bool(getattr(attribution_method, "multiplies_by_inputs", False))
        self.is_gradient_method = isinstance(attribution_method, GradientAttribution) or hasattr(
            attribution_method, "compute_convergence_delta")
        super().__init__(attribution_method.forward_func)

    @property
    def multiplies_by_inputs(self) -> bool:
        """The wrapped method's ``multiplies_by_inputs``."""
        return self._multiply_by_inputs

    def has_convergence_delta(self) -> bool:
        """Whether the wrapped method has a convergence delta."""
        return self.is_delta_supported

    @public
    def attribute(self, inputs: TensorOrTuple, nt_type: str = "smoothgrad", nt_samples: int = 5,
                  nt_samples_batch_size: Optional[int] = None, stdevs: Union[float, tuple[float, ...]] = 1.0,
                  draw_baseline_from_distrib: bool = False, **kwargs: Any):
        """The wrapped method's attributions of ``inputs`` (a tensor or a tuple of tensors),
        reduced over the noisy copies by ``nt_type``: one tensor per attribution the
        method returns, of its shape; with ``return_convergence_delta=True`` (for a method
        with a delta) the pair ``(attributions, deltas)``, one delta per noisy copy.
        ``draw_baseline_from_distrib``: each copy takes a baseline drawn at random from the
        given baselines (Captum's option). Bad values raise `CaptumArgumentError`."""
        xs, is_tuple = input_tuple(inputs)
        if nt_type not in NT_TYPES:
            raise CaptumArgumentError(f"nt_type must be one of {', '.join(NT_TYPES)}, got {nt_type!r}")
        if not isinstance(nt_samples, int) or isinstance(nt_samples, bool) or nt_samples < 1:
            raise CaptumArgumentError(f"nt_samples must be an int >= 1, got {nt_samples!r}")
        if nt_samples_batch_size is not None and (not isinstance(nt_samples_batch_size, int)
                                                  or isinstance(nt_samples_batch_size, bool) or nt_samples_batch_size < 1):
            raise CaptumArgumentError(f"nt_samples_batch_size must be None or an int >= 1, got {nt_samples_batch_size!r}")
        sds = stdevs if isinstance(stdevs, tuple) else (stdevs,) * len(xs)
        if len(sds) != len(xs):
            raise CaptumArgumentError(f"stdevs: give one per input tensor ({len(xs)}), got {len(sds)}")
        for s in sds:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not s >= 0:
                raise CaptumArgumentError(f"stdevs must be non-negative numbers, got {stdevs!r}")
        want_delta = bool(kwargs.get("return_convergence_delta", False)) and self.is_delta_supported
        if not self.is_delta_supported:
            kwargs.pop("return_convergence_delta", None)
        batch = nt_samples if nt_samples_batch_size is None else min(nt_samples, nt_samples_batch_size)
        sizes = [batch] * (nt_samples // batch) + ([nt_samples % batch] if nt_samples % batch else [])
        sums: list[Optional[Tensor]] = []
        sq_sums: list[Optional[Tensor]] = []
        deltas = []
        attr_is_tuple = is_tuple
        expanded: dict[int, dict] = {}
        n = xs[0].shape[0]
        with torch.no_grad():
            for copies in sizes:
                if copies not in expanded:
                    expanded[copies] = _expand_kwargs(kwargs, xs, copies, draw_baseline_from_distrib)
                noisy = []
                for x, sd in zip(xs, sds):
                    noise = torch.randn((n * copies, *x.shape[1:]), device=x.device) * float(sd)
                    noisy.append(x.repeat_interleave(copies, dim=0) + noise)
                result = self.attribution_method.attribute(tuple(noisy) if is_tuple else noisy[0], **expanded[copies])
                if want_delta:
                    result, delta = result
                    deltas.append(delta)
                attr_is_tuple = isinstance(result, tuple)
                attrs = result if attr_is_tuple else (result,)
                if not sums:
                    sums, sq_sums = [None] * len(attrs), [None] * len(attrs)
                for i, a in enumerate(attrs):
                    per = a.reshape(a.shape[0] // copies, copies, *a.shape[1:])
                    s, sq = per.sum(dim=1), per.pow(2).sum(dim=1)
                    sums[i] = s if sums[i] is None else sums[i] + s
                    sq_sums[i] = sq if sq_sums[i] is None else sq_sums[i] + sq
            mean = [s * (1 / nt_samples) for s in sums]
            mean_sq = [s * (1 / nt_samples) for s in sq_sums]
            if nt_type == "smoothgrad":
                out = mean
            elif nt_type == "smoothgrad_sq":
                out = mean_sq
            else:
                out = [m2 - m * m for m, m2 in zip(mean, mean_sq)]
        formatted = format_output(attr_is_tuple, out)
        if want_delta:
            return formatted, torch.cat(deltas, dim=0)
        return formatted
