"""Thin typed wrappers over ``torch.ops.interp_ext.*`` plus their autograd registration.

Every function here only normalises arguments; the checks and the work happen in the
native kernels (CPU or CUDA, picked by the dispatcher from the tensors' device).
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch

Rule = Literal["guided", "deconvnet"]
CamVariant = Literal["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"]

_ops = torch.ops.interp_ext


def guided_relu(x: torch.Tensor, upper: Optional[float] = None, rule: Rule = "guided") -> torch.Tensor:
    """Rectifier whose backward is the guided-backprop (or deconvnet) rule.

    Forward: ``relu(x)``, or ``clamp(x, 0, upper)`` (ReLU6 is ``upper=6``).
    Backward, for an incoming gradient ``g``:

    - ``rule="guided"``: ``g * (0 < x < upper) * (g > 0)`` (Springenberg et al.);
    - ``rule="deconvnet"``: ``g * (g > 0)`` (Zeiler & Fergus), ignoring ``x``.

    Differentiable once (the backward is the native ``guided_relu_backward``).
    """
    return _ops.guided_relu.default(x, _as_upper(upper), rule)


def guided_relu_(x: torch.Tensor, upper: Optional[float] = None, rule: Rule = "guided") -> torch.Tensor:
    """In-place :func:`guided_relu`: rectifies ``x`` itself and returns it. Autograd
    records it like ``relu_`` (no extra copies); the backward is the same rule."""
    _ops.guided_relu_.default(x, _as_upper(upper), rule)
    return x


def guided_relu_backward(
    grad_output: torch.Tensor,
    x: torch.Tensor,
    upper: Optional[float] = None,
    rule: Rule = "guided",
    *,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The backward of :func:`guided_relu` as a standalone op.

    ``x`` may be the forward input or the forward output (the mask is the same).
    Pass ``out=`` to write into a buffer you reuse (it may be ``grad_output`` itself,
    for an in-place update); it must have ``grad_output``'s shape, dtype and device.
    """
    if out is None:
        return _ops.guided_relu_backward.default(grad_output, x, _as_upper(upper), rule)
    _ops.guided_relu_backward.out(grad_output, x, _as_upper(upper), rule, out=out)
    return out


def saliency_reduce(grad: torch.Tensor) -> torch.Tensor:
    """Simonyan et al. saliency map: ``max_c |grad[:, c]|``, ``(N, C, H, W) -> (N, H, W)``.

    Inference only: no autograd.
    """
    return _ops.saliency_reduce.default(grad)


def gradcam(
    activations: torch.Tensor,
    gradients: torch.Tensor,
    *,
    variant: CamVariant = "gradcam",
    relu: bool = True,
    output_size: Optional[Sequence[int]] = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Class activation maps ``(N, 1, H, W)`` from a layer's activations and the target
    score's gradients with respect to them, both ``(N, K, h, w)``, in one native pass.

    ``variant``: ``"gradcam"`` (channel weights = spatial mean of the gradients),
    ``"gradcam++"`` (Chattopadhyay et al. alpha weights), ``"xgradcam"``, ``"layercam"``
    (element-wise positive-gradient weighting) or ``"hirescam"`` (element-wise gradient x
    activation). Then ReLU (``relu``), bilinear resize to ``output_size=(H, W)``
    (``align_corners=False``, as ``F.interpolate``) and per-sample min-max to [0, 1] on
    the resized map (``normalize``; a constant map gives zeros). Accumulates in float32
    (float64 for float64 input); returns the input dtype. Inference only: no autograd.
    See ``interp_ext.reference.gradcam`` for the formulas.
    """
    return _ops.gradcam.default(activations, gradients, variant, relu, _as_size(output_size), normalize)


def cam(
    features: torch.Tensor,
    fc_weight: torch.Tensor,
    class_idx: torch.Tensor,
    *,
    relu: bool = True,
    output_size: Optional[Sequence[int]] = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Zhou et al. CAM ``(N, 1, H, W)``: ``sum_k fc_weight[class_idx[n], k] * features[n, k]``
    for last-conv ``features (N, K, h, w)`` and classifier weights ``(num_classes, K)``;
    same ``relu`` / ``output_size`` / ``normalize`` finishing as :func:`gradcam`.
    Inference only."""
    return _ops.cam.default(features, fc_weight, class_idx, relu, _as_size(output_size), normalize)


def occlusion_batch(
    x: torch.Tensor,
    baseline: torch.Tensor,
    window: Sequence[int],
    stride: Sequence[int],
    start: int,
    count: int,
    *,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Occluded copies ``(count * N, C, H, W)`` of ``x (N, C, H, W)``: for each window
    ``start .. start + count - 1`` (window-major, windows row-major over the (C, H, W)
    grid), every image with that window replaced by ``baseline`` (``(1 or N, C, H, W)``).
    Windows per dimension: ``ceil((D - w) / s) + 1``, the last clipped at the border, as
    Captum's ``Occlusion``. Each output element is written once; no mask is built.
    ``out=``: a contiguous buffer of that shape to reuse across calls. Inference only."""
    args = (x, baseline, [int(w) for w in window], [int(s) for s in stride], int(start), int(count))
    if out is None:
        return _ops.occlusion_batch.default(*args)
    _ops.occlusion_batch.out(*args, out=out)
    return out


def occlusion_batch_at(
    x: torch.Tensor,
    baseline: torch.Tensor,
    window: Sequence[int],
    stride: Sequence[int],
    windows: torch.Tensor,
    *,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """`occlusion_batch` with a window per copy and image: ``windows`` is int64
    ``(count, N)`` and copy ``j`` of image ``n`` (row ``j * N + n``) occludes window
    ``windows[j, n]``, so each image can get its own windows (coarse-to-fine occlusion).
    ``out=``: a contiguous buffer to reuse. Inference only."""
    args = (x, baseline, [int(w) for w in window], [int(s) for s in stride], windows)
    if out is None:
        return _ops.occlusion_batch_at.default(*args)
    _ops.occlusion_batch_at.out(*args, out=out)
    return out


def occlusion_accumulate(
    diffs: torch.Tensor, shape: Sequence[int], window: Sequence[int], stride: Sequence[int]
) -> torch.Tensor:
    """Per-window score differences ``(N, P)`` -> ``(N, C, H, W)``: each element's mean
    over the windows that cover it (0 where none does), as a gather from a summed-area
    table of the scores: no atomics, no per-window temporaries. Inference only."""
    return _ops.occlusion_accumulate.default(diffs, [int(d) for d in shape], [int(w) for w in window], [int(s) for s in stride])


def occlusion_window_count(shape: Sequence[int], window: Sequence[int], stride: Sequence[int]) -> int:
    """How many windows the occlusion ops slide over a (C, H, W) shape."""
    total = 1
    for d, w, s in zip(shape, window, stride):
        total *= (d - w + s - 1) // s + 1
    return total


def feature_batch(
    x: torch.Tensor,
    baseline: torch.Tensor,
    feature_mask: torch.Tensor,
    present: torch.Tensor,
    *,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Copies ``(B * N, C, H, W)`` of ``x (N, C, H, W)`` with chosen features kept: copy
    ``b`` of image ``n`` (row ``b * N + n``) holds ``x`` where ``present[b, id]`` for the
    element's feature id ``feature_mask[n, c, h, w]`` and ``baseline`` elsewhere.

    ``baseline``: ``(1 or N, C, H, W)``; ``feature_mask``: int64 ``(1 or N, 1 or C, H, W)``
    with ids in ``[0, F)``; ``present``: bool ``(B, F)``. The batch machinery of Shapley
    sampling and feature ablation; each output element is written once. ``out=``: a
    contiguous buffer of that shape to reuse across calls. Inference only."""
    if out is None:
        return _ops.feature_batch.default(x, baseline, feature_mask, present)
    _ops.feature_batch.out(x, baseline, feature_mask, present, out=out)
    return out


def _as_size(size: Optional[Sequence[int]]) -> Optional[list[int]]:
    return None if size is None else [int(s) for s in size]


def _as_upper(upper: Optional[float]) -> Optional[float]:
    if upper is None or upper == float("inf"):
        return None
    return float(upper)


# ---- autograd ---------------------------------------------------------------------------


def _guided_relu_setup_context(ctx, inputs, output):
    _, upper, rule = inputs
    # Save the output, not the input: the mask is the same, and a caller that
    # overwrites the input in place (relu_ spellings) does not invalidate it.
    ctx.save_for_backward(output)
    ctx.upper, ctx.rule = upper, rule


def _guided_relu_backward(ctx, grad_output):
    (output,) = ctx.saved_tensors
    return _ops.guided_relu_backward.default(grad_output, output, ctx.upper, ctx.rule), None, None


torch.library.register_autograd(
    "interp_ext::guided_relu", _guided_relu_backward, setup_context=_guided_relu_setup_context
)
