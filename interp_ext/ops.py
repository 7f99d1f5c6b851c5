"""Thin typed wrappers over ``torch.ops.interp_ext.*`` plus their autograd registration.

Every function here only normalises arguments; the checks and the work happen in the
native kernels (CPU or CUDA, picked by the dispatcher from the tensors' device).
"""
from __future__ import annotations

import functools
import math
from typing import Literal, Optional, Sequence, Union

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


Padding = Literal["reflect", "replicate", "zeros"]
SigmaLike = Union[float, Sequence[float], torch.Tensor]


def patch_splice(
    src: torch.Tensor,
    sample: torch.Tensor,
    origin: torch.Tensor,
    size: Sequence[int],
    pad_value: float = 0.0,
    patch: Optional[torch.Tensor] = None,
    patch_origin: Optional[torch.Tensor] = None,
    *,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Boxes ``(K, C, h, w)`` read from ``src (N, C, H, W)``: box ``k`` is image
    ``sample[k]`` from map row/column ``origin[k]`` (int64 ``(K, 2)``; it may start
    outside the map), ``pad_value`` where it leaves the map, and ``patch[k]``
    (``(K, C, ph, pw)``, its top-left at ``patch_origin[k]``) spliced in where they
    overlap. Incremental occlusion's one gather per layer: the un-occluded activation
    with each window's changed patch, padded as the layer pads. Each output element is
    written once. ``out=``: a ``(K, C, h, w)`` buffer to write into. Inference only."""
    args = (src, sample, origin, [int(v) for v in size], float(pad_value), patch, patch_origin)
    if out is None:
        return _ops.patch_splice.default(*args)
    _ops.patch_splice.out(*args, out=out)
    return out


def gaussian_kernel_size(sigma: float) -> int:
    """The default kernel size for a Gaussian of standard deviation `sigma`: the odd
    size 2 * ceil(3 sigma) + 1, which covers +-3 sigma (99.7% of the mass)."""
    return 2 * math.ceil(3 * float(sigma)) + 1


def gaussian_taps(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised 1-D Gaussian taps (len(sigma), size) at offsets i - (size - 1) / 2,
    the same numbers as torchvision's ``gaussian_blur`` kernel."""
    offsets = torch.arange(size, dtype=torch.float64, device=sigma.device) - (size - 1) / 2
    pdf = torch.exp(-0.5 * (offsets[None, :] / sigma.double()[:, None]) ** 2)
    return pdf / pdf.sum(dim=1, keepdim=True)


def _tensor_sigmas(sigma: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """A scalar, (sigma_h, sigma_w), or per-sample (N,) / (N, 2) tensor -> (1 or N, 2) float64."""
    s = sigma.detach().to(device=device, dtype=torch.float64)
    if s.dim() == 0:
        s = s.view(1, 1).expand(1, 2)
    elif s.dim() == 1 and s.shape[0] == batch:
        s = s[:, None].expand(batch, 2)
    elif s.dim() == 1 and s.shape[0] == 2:
        s = s[None]
    elif not (s.dim() == 2 and s.shape == (batch, 2)):
        raise ValueError(f"sigma: a tensor must be a scalar, (2,), (N,) or (N, 2) with N = {batch}, got {tuple(s.shape)}")
    if not bool((torch.isfinite(s) & (s > 0)).all()):  # one device read
        raise ValueError(f"sigma must be positive and finite, got {s.flatten().tolist()}")
    return s


def _number_sigmas(sigma: Union[float, Sequence[float]]) -> tuple[float, float]:
    """A number or (sigma_h, sigma_w) -> (sigma_h, sigma_w), checked on the host."""
    if isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
        pair = (float(sigma), float(sigma))
    elif isinstance(sigma, Sequence) and len(sigma) == 2:
        pair = (float(sigma[0]), float(sigma[1]))
    else:
        raise ValueError(f"sigma must be a number, (sigma_h, sigma_w) or a per-sample tensor, got {sigma!r}")
    if not all(math.isfinite(v) and v > 0 for v in pair):
        raise ValueError(f"sigma must be positive and finite, got {list(pair)}")
    return pair


@functools.lru_cache(maxsize=64)
def _number_taps(sigma: float, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`gaussian_taps` of one sigma, (1, size), kept per (sigma, size, dtype, device): a
    blur in a loop then costs no tap arithmetic, host-to-device copy or device sync (the
    taps of a few images' blur took ~0.1 ms of Python, a third of the whole call)."""
    return gaussian_taps(torch.tensor([sigma], dtype=torch.float64), size).to(device=device, dtype=dtype)


def gaussian_blur(
    x: torch.Tensor,
    sigma: SigmaLike,
    kernel_size: Union[None, int, Sequence[int]] = None,
    padding: Padding = "reflect",
    *,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Gaussian blur of ``x (N, C, H, W)``, separable and fused in one native pass.

    ``sigma``: a number, ``(sigma_h, sigma_w)``, or per sample ``(N,)`` / ``(N, 2)`` (a
    tensor of 2 values with N = 2 is read per sample; pass ``(2, 2)`` or a tuple for the axes).
    ``kernel_size``: an int or ``(k_h, k_w)``; default `gaussian_kernel_size` of the largest
    sigma per axis (odd, covering +-3 sigma). For the same odd size and sigma the result
    equals torchvision's ``gaussian_blur`` (which takes ``[k_w, k_h]``, width first). An
    even size puts its extra tap on the right (as ``conv2d(padding="same")``).
    ``padding``: ``"reflect"`` (torchvision's; mirrored periodically when the kernel is
    wider than the image, where torchvision raises), ``"replicate"`` or ``"zeros"``.
    Differentiable in ``x``; the backward is the exact adjoint, borders included.
    ``out=``: a buffer of ``x``'s shape and dtype to write into and return (reused across
    the steps of a loop it saves a fresh allocation per call; it may be ``x`` itself, for
    an in-place blur); not differentiable.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be an (N, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if kernel_size is not None:
        # ints only, as torchvision: a float (even 3.0), a string or a tensor is refused
        if isinstance(kernel_size, int):
            sizes = [kernel_size] * 2
        else:
            sizes = list(kernel_size) if isinstance(kernel_size, (tuple, list)) else []
        if len(sizes) != 2 or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in sizes):
            raise ValueError(f"kernel_size must be a positive int or (k_h, k_w) of ints, got {kernel_size!r}")
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    if isinstance(sigma, torch.Tensor):
        s = _tensor_sigmas(sigma, x.shape[0], x.device)
        if kernel_size is None:
            sizes = [gaussian_kernel_size(v) for v in s.amax(0).tolist()]
        taps_h, taps_w = (gaussian_taps(s[:, a], sizes[a]).to(compute) for a in (0, 1))
    else:
        pair = _number_sigmas(sigma)
        if kernel_size is None:
            sizes = [gaussian_kernel_size(v) for v in pair]
        # Cached for plain tensors in eager mode; traced (torch.compile, fake tensors), the
        # taps must be made inside the trace, not fetched from outside it.
        eager = type(x) is torch.Tensor and not torch.compiler.is_compiling()
        make = _number_taps if eager else _number_taps.__wrapped__
        taps_h, taps_w = (make(pair[a], sizes[a], compute, x.device) for a in (0, 1))
    return separable_filter(x, taps_h, taps_w, padding, out=out)


def separable_filter(
    x: torch.Tensor,
    taps_h: torch.Tensor,
    taps_w: torch.Tensor,
    padding: Padding = "reflect",
    *,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``x (N, C, H, W)`` filtered along H by ``taps_h`` and along W by ``taps_w``, each
    ``(1 or N, k)`` (float64 for float64 ``x``, else float32); output ``i`` reads input
    ``i + t - (k - 1) // 2``. Differentiable in ``x`` (native adjoint), except into
    ``out=`` (a buffer of ``x``'s shape and dtype; it may be ``x``)."""
    if out is None:
        return _ops.separable_filter.default(x, taps_h, taps_w, padding)
    if torch.is_grad_enabled() and (x.requires_grad or out.requires_grad):
        raise ValueError("out= is not differentiable: pass no out (or run under torch.no_grad()) when x requires grad")
    _ops.separable_filter.out(x, taps_h, taps_w, padding, out=out)
    return out


def total_variation(x: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Total variation per sample, ``(N,)``, of ``x (N, C, H, W)`` (Mahendran & Vedaldi):
    ``sum_{c,i,j} ((x[i,j+1] - x[i,j])^2 + (x[i+1,j] - x[i,j])^2)^(beta / 2)``, the
    differences that would leave the image taken as 0 (``beta=2``: the sum of all squared
    forward differences). Differentiable in ``x`` (native backward; for ``beta < 2`` the
    gradient where both differences vanish is taken as 0)."""
    return _ops.total_variation.default(x, float(beta))


def regularize_step_(
    x: torch.Tensor,
    grad: torch.Tensor,
    lr: float,
    *,
    decay: float = 0.0,
    grad_percentile: float = 0.0,
    norm_percentile: float = 0.0,
    contribution_percentile: float = 0.0,
) -> torch.Tensor:
    """One regularised gradient-ascent step of Yosinski et al., in place on ``x (N, C, H, W)``.

    In order: entries of ``grad`` with ``|grad|`` below its per-sample ``grad_percentile``
    are zeroed; ``x = (x + lr * grad) * (1 - decay)`` (L2 decay); pixels whose norm over
    channels is below the ``norm_percentile`` of their sample, or whose contribution
    ``sum_c |x * grad|`` is below the ``contribution_percentile``, are set to 0.
    Percentiles in [0, 100) (0 disables one), computed on the device; one fused pass plus
    a statistics pass when pixels are clipped. The periodic blur is `gaussian_blur`.
    Not differentiable (it is the optimiser's update). Returns ``x``."""
    _ops.regularize_step_.default(x, grad, float(lr), float(decay), float(grad_percentile), float(norm_percentile),
                                  float(contribution_percentile))
    return x


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


def _separable_filter_setup_context(ctx, inputs, output):
    _, taps_h, taps_w, padding = inputs
    ctx.save_for_backward(taps_h, taps_w)
    ctx.padding = padding


def _separable_filter_backward(ctx, grad_output):
    taps_h, taps_w = ctx.saved_tensors
    grad = _ops.separable_filter_backward.default(grad_output, taps_h, taps_w, ctx.padding)
    return grad, None, None, None


torch.library.register_autograd(
    "interp_ext::separable_filter", _separable_filter_backward, setup_context=_separable_filter_setup_context
)


def _total_variation_setup_context(ctx, inputs, output):
    x, beta = inputs
    ctx.save_for_backward(x)
    ctx.beta = beta


def _total_variation_backward(ctx, grad_output):
    (x,) = ctx.saved_tensors
    return _ops.total_variation_backward.default(grad_output, x, ctx.beta), None


torch.library.register_autograd(
    "interp_ext::total_variation", _total_variation_backward, setup_context=_total_variation_setup_context
)
