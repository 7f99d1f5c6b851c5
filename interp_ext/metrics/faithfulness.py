"""Faithfulness curves: how the model's score of the target class falls as the features an
attribution ranks highest are replaced (or rises as they are added back).

`pixel_flipping`, `region_perturbation` and `selectivity` follow Quantus 0.6's definitions,
arguments and numbers (Bach et al. 2015; Samek et al. 2015; Montavon et al. 2018);
`deletion` and `insertion` follow RISE (Petsiuk et al. 2018). Where an attribution has ties,
the ranking is a stable sort: equal values keep their order of position, pixel by pixel
(row-major) and, within a pixel, channel by channel, so every run gives the same curve
(Quantus's NumPy sort leaves ties in no specified order: its curves match ours on maps
without ties). Copies are built on the inputs' device in batches of at most ``batch_size``
and scored forward-only (`interp_ext.metrics._curves`).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import incremental as _incremental
from .. import ops
from ..attr._common import Target, eval_mode
from ._curves import (
    Baseline,
    CurveModel,
    canvas_of,
    check_attributions,
    check_baseline,
    check_model_and_inputs,
    check_positive_int,
    descending_ranks,
    replacement_curves,
    step_values,
    trapezoid,
)

Canvas = Union[str, float, int, torch.Tensor]
Seed = Union[None, int, Sequence[int]]


def _prepare(attributions: torch.Tensor, normalise: bool, take_abs: bool) -> torch.Tensor:
    """Quantus's preprocessing: divided by the batch's largest magnitude, then ``abs``
    (the division leaves every ranking as it is)."""
    if normalise:
        top = attributions.abs().max()
        if top > 0:
            attributions = attributions / top
    return attributions.abs() if take_abs else attributions


def _pixel_major_ranks(a: torch.Tensor) -> torch.Tensor:
    """Descending ranks of the elements of ``a (N, K, H, W)`` in ``(N, K, H, W)``, ties in
    pixel-major order (pixel, then channel)."""
    n, k, h, w = a.shape
    ranks = descending_ranks(a.permute(0, 2, 3, 1).reshape(n, -1))
    return ranks.view(n, h, w, k).permute(0, 3, 1, 2)


def _generators(seed: Seed, n: int) -> Optional[list[torch.Generator]]:
    """One CPU generator per image: an image's draws do not depend on the others in the
    call. A sequence seeds each image; an int ``s`` seeds image ``i`` with ``s + i``."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, Sequence)) or isinstance(seed, str):
        raise TypeError(f"seed must be None, an int or one int per image, got {type(seed).__name__}")
    seeds = [seed + i for i in range(n)] if isinstance(seed, int) else list(seed)
    if len(seeds) != n or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"seed must be an int or {n} ints (one per image), got {seed!r}")
    return [torch.Generator().manual_seed(s) for s in seeds]


def pixel_flipping(
    model: nn.Module,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: Target = None,
    *,
    features_in_step: int = 1,
    perturb_baseline: Baseline = "black",
    softmax: bool = True,
    normalise: bool = True,
    abs: bool = False,  # noqa: A002 (Quantus's argument name)
    return_auc_per_sample: bool = False,
    uniform_low: float = 0.0,
    uniform_high: float = 1.0,
    seed: Seed = None,
    batch_size: int = 64,
    tune: bool = True,
    show_progress: bool = False,
) -> torch.Tensor:
    """Pixel flipping (Bach et al. 2015), as Quantus's ``PixelFlipping``: the elements of
    each image (all ``C * H * W``; a one-channel map is broadcast over the channels) are
    replaced ``features_in_step`` at a time, highest attribution first, and the target's
    score is taken after each step.

    Args:
        model: the classifier; run in eval mode, forward only.
        inputs: images ``(N, C, H, W)`` as the model takes them.
        attributions: ``(N, 1 or C, H, W)`` or ``(N, H, W)``.
        target: class per image (int, sequence, tensor); None takes the top-1 class.
        features_in_step: elements replaced per step; it must divide ``H * W`` (Quantus's
            rule), and the curve has ``C * H * W / features_in_step`` points.
        perturb_baseline: "black" / "white" (the image's min / max), "mean" (the mean of the
            image as perturbed so far), "uniform" (a value per step drawn from
            ``[uniform_low, uniform_high)``), a number, or a tensor
            broadcastable to the inputs (a replacement image).
        softmax: score by class probability (Quantus's default) instead of the raw output.
        normalise, abs: Quantus's preprocessing of the attributions.
        seed: the "uniform" draws (and region perturbation's "random" order): one int per
            image, or an int ``s`` that gives image ``i`` the seed ``s + i``; None draws from
            torch's global generator.
        return_auc_per_sample: return each curve's area (trapezoidal rule, unit spacing).
        batch_size: copies built and scored at once (a memory bound).
        tune: run the BatchNorm-folded model at the tuned batch and memory format
            (`interp_ext.tuning`); scores then agree with the plain model's to float
            rounding. False runs the model as given.
        show_progress: a tqdm bar.

    Returns:
        float64 curves ``(N, steps)``, or their areas ``(N,)``.
    """
    check_model_and_inputs(model, inputs)
    n, c, h, w = inputs.shape
    a = check_attributions(attributions, inputs)
    check_positive_int(features_in_step, "features_in_step")
    if (h * w) % features_in_step:
        raise ValueError(
            f"features_in_step must divide the number of pixels H * W = {h * w} (Quantus's rule), got {features_in_step}"
        )
    baseline = check_baseline(perturb_baseline, inputs)
    check_positive_int(batch_size, "batch_size")
    steps = c * h * w // features_in_step
    a = _prepare(a, normalise, abs)
    x = inputs.detach().contiguous()
    if a.shape[1] == 1 and c > 1:
        # a pixel's channels take consecutive ranks C r .. C r + C - 1
        pixel = _pixel_major_ranks(a) * c
        if features_in_step % c == 0:
            elem_steps = pixel // features_in_step
        else:
            elem_steps = (pixel + torch.arange(c, device=x.device).view(1, c, 1, 1)) // features_in_step
    else:
        elem_steps = _pixel_major_ranks(a) // features_in_step
    canvas = _canvas(baseline, x, elem_steps, steps, uniform_low, uniform_high, seed)
    scorer = CurveModel(model, softmax, tune)  # outside inference mode: the folded copy is cached for gradients too
    with eval_mode(model), torch.inference_mode():
        idx, _ = scorer.targets(x, target)
        curves = replacement_curves(
            scorer, x, idx, elem_steps, canvas, steps,
            batch_size=batch_size, show_progress=show_progress, desc="pixel flipping",
        )
    curves = curves.clone()  # an ordinary tensor outside inference mode
    return trapezoid(curves) if return_auc_per_sample else curves


def _canvas(baseline: Baseline, x: torch.Tensor, elem_steps: torch.Tensor, steps: int, low: float, high: float,
            seed: Optional[int], ref: Optional[torch.Tensor] = None, ref_steps: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The replacement image ``(N, C, H, W)`` of ``x``: a tensor baseline as given, else each
    element its step's value (`step_values` over ``ref``, by default ``x`` itself)."""
    if isinstance(baseline, torch.Tensor):
        return baseline.to(device=x.device, dtype=x.dtype).expand(x.shape).contiguous()
    ref, ref_steps = (x, elem_steps) if ref is None else (ref, ref_steps)
    values = step_values(baseline, ref, ref_steps, steps, uniform_low=low, uniform_high=high,
                         generators=_generators(seed, x.shape[0]))
    return canvas_of(values, elem_steps, x.shape, x.dtype)


def _padding(dim: int, patch: int) -> tuple[int, int]:
    extra = (patch - dim % patch) % patch
    return extra // 2, extra - extra // 2


def _patch_metric(model, inputs, attributions, target, *, patch_size, order, regions, perturb_baseline,
                  softmax, normalise, take_abs, uniform_low, uniform_high, seed, batch_size, tune, incremental,
                  show_progress, name) -> tuple[torch.Tensor, torch.Tensor]:
    """Region perturbation's and selectivity's common part: the target's clean score
    ``(N,)`` and scores ``(N, R)`` after the first ``R`` patches in ``order`` are replaced.
    Copy ``k`` is copy ``k - 1`` with one more patch replaced: with incremental inference
    (`interp_ext.incremental.run_chain`) each step recomputes only what that patch reaches."""
    check_model_and_inputs(model, inputs)
    n, c, h, w = inputs.shape
    a = check_attributions(attributions, inputs)
    check_positive_int(patch_size, "patch_size")
    if patch_size > min(h, w):
        raise ValueError(f"patch_size must be at most the image's smaller side {min(h, w)}, got {patch_size}")
    if order not in ("morf", "lerf", "random"):
        raise ValueError(f"order must be 'morf', 'lerf' or 'random', got {order!r}")
    if incremental not in (None, True, False):
        raise ValueError(f"incremental must be None, True or False, got {incremental!r}")
    baseline = check_baseline(perturb_baseline, inputs)
    check_positive_int(batch_size, "batch_size")
    a = _prepare(a, normalise, take_abs)
    pad_h, pad_w = _padding(h, patch_size), _padding(w, patch_size)
    pads = (pad_w[0], pad_w[1], pad_h[0], pad_h[1])
    # each patch's mean attribution over the zero-padded map (row-major patches): the sum's order
    sums = F.avg_pool2d(F.pad(a.sum(1, keepdim=True), pads), patch_size).flatten(1)
    patches = sums.shape[1]
    regions = patches if regions is None else min(check_positive_int(regions, "regions_evaluation"), patches)
    if order == "random":
        gens = _generators(seed, n) or [None] * n
        rank = torch.stack([torch.randperm(patches, generator=g) for g in gens]).to(sums.device)
    else:
        rank = descending_ranks(sums if order == "morf" else -sums)
    x = inputs.detach().contiguous()
    hp, wp = h + sum(pad_h), w + sum(pad_w)
    sequence = rank.argsort(1)  # (N, P): the patch replaced at each step
    # each padded pixel's step is its patch's rank; `regions` (never) past the evaluated ones
    rank = rank.clamp(max=regions).view(n, 1, hp // patch_size, wp // patch_size)
    padded_steps = rank.repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)
    elem_steps = padded_steps[..., pad_h[0] : pad_h[0] + h, pad_w[0] : pad_w[0] + w].contiguous()
    ref = ref_steps = None
    if isinstance(baseline, str) and baseline == "mean":  # Quantus's mean is over the image edge-padded to the patch grid
        ref, ref_steps = F.pad(x.double(), pads, mode="replicate"), padded_steps
    canvas = _canvas(baseline, x, elem_steps, regions, uniform_low, uniform_high, seed, ref, ref_steps)
    scorer = CurveModel(model, softmax, tune)  # outside inference mode: the folded copy is cached for gradients too
    with eval_mode(model), torch.inference_mode():
        plan, grid = _chain_plan(scorer, x, patch_size, pad_h[0], pad_w[0], incremental)
        idx, clean = scorer.targets(x, target)
        if plan is None:
            curves = replacement_curves(
                scorer, x, idx, elem_steps, canvas, regions,
                batch_size=batch_size, show_progress=show_progress, desc=name.replace("-", " "),
            )
        else:
            curves = torch.empty(n, regions, dtype=torch.float64, device=x.device)
            group = min(n, batch_size)
            kind = f"metrics-chain {patch_size} {pad_h[0]} {pad_w[0]}"
            with tqdm(total=-(-n // group) * regions, desc=name.replace("-", " "), unit="step",
                      disable=not show_progress, leave=False) as bar:
                for g in range(0, n, group):
                    rows = slice(g, g + group)
                    pick = idx[rows]
                    score = lambda out, s, pick=pick: scorer.probabilities(out).gather(1, pick[s, None])[:, 0]  # noqa: E731
                    curves[rows] = _incremental.run_chain(plan, grid, x[rows], canvas[rows], sequence[rows], regions,
                                                          score, scorer.planned if tune else None, kind, bar.update)
    return clean.clone(), curves.clone()


def _chain_plan(scorer: CurveModel, x: torch.Tensor, patch: int, pad_top: int, pad_left: int,
                incremental: Optional[bool]):
    """The plan of one patch at a time (None: copies in full): with ``incremental=None``
    when the model can be planned and the plan saves at least 1.2x the multiply-adds."""
    if incremental is False or (incremental is None and not _incremental.worth_tracing(scorer.planned)):
        return None, None
    grid = _incremental.patch_grid(tuple(x.shape[1:]), patch, pad_top, pad_left, x.device)
    plan, reason = _incremental.chain_plan(scorer.planned, x, grid, (patch, pad_top, pad_left))
    if plan is None and incremental:
        raise ValueError(f"incremental: this model cannot be planned: {reason}")
    if plan is not None and incremental is None and plan.flop_ratio < 1.2:
        return None, None
    return plan, grid


def region_perturbation(
    model: nn.Module,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: Target = None,
    *,
    patch_size: int = 8,
    order: str = "morf",
    regions_evaluation: int = 100,
    perturb_baseline: Baseline = "black",
    softmax: bool = True,
    normalise: bool = True,
    abs: bool = False,  # noqa: A002 (Quantus's argument name)
    return_auc_per_sample: bool = False,
    uniform_low: float = 0.0,
    uniform_high: float = 1.0,
    seed: Seed = None,
    batch_size: int = 64,
    tune: bool = True,
    incremental: Optional[bool] = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """Region perturbation (Samek et al. 2015), as Quantus's ``RegionPerturbation``: the
    patches are replaced one after another in ``order`` ("morf": most relevant first,
    "lerf": least relevant first, "random": ``seed``), and the curve is the target score's
    drop ``score(x) - score(perturbed)`` after each of the first ``regions_evaluation``.

    The other arguments are those of `pixel_flipping`.

    Args:
        patch_size: side of the square patches; the image is padded to a multiple of it
            (the extra split floor / ceil between the sides, as Quantus), patches in
            row-major order, each ranked by its attribution sum over the zero-padded map.
        perturb_baseline: as `pixel_flipping` ("black", "white", "mean" of the image as
            perturbed so far, edge-padded as Quantus does, "uniform", a number, a tensor).
        incremental: copy ``k`` is copy ``k - 1`` with one more patch replaced, so with
            incremental inference (`interp_ext.incremental`, traced once with ``torch.fx``)
            each step recomputes only what that patch reaches, from the previous copy's
            activations; exact (float rounding aside). None (default): when the model has
            convolution weights, no hooks, can be planned, and the plan saves at least 1.2x
            the multiply-adds; True: always (a model that cannot be planned is an error);
            False: every copy in full.

    Returns:
        float64 curves ``(N, regions)``, or their areas ``(N,)``.
    """
    clean, scores = _patch_metric(
        model, inputs, attributions, target, patch_size=patch_size, order=order, regions=regions_evaluation,
        perturb_baseline=perturb_baseline, softmax=softmax, normalise=normalise, take_abs=abs,
        uniform_low=uniform_low, uniform_high=uniform_high, seed=seed, batch_size=batch_size, tune=tune,
        incremental=incremental, show_progress=show_progress, name="region-perturbation",
    )
    curves = clean[:, None] - scores
    return trapezoid(curves) if return_auc_per_sample else curves


def selectivity(
    model: nn.Module,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: Target = None,
    *,
    patch_size: int = 8,
    perturb_baseline: Baseline = "black",
    softmax: bool = True,
    normalise: bool = True,
    abs: bool = False,  # noqa: A002 (Quantus's argument name)
    return_auc_per_sample: bool = False,
    uniform_low: float = 0.0,
    uniform_high: float = 1.0,
    seed: Seed = None,
    batch_size: int = 64,
    tune: bool = True,
    incremental: Optional[bool] = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """Selectivity (Montavon et al. 2018), as Quantus's ``Selectivity``: every patch is
    replaced in turn, most relevant first, and the curve is the target's score after each
    (a faithful map makes it fall fast: a small area).

    The other arguments are those of `pixel_flipping`.

    Args:
        patch_size: side of the square patches; the image is padded to a multiple of it
            (the extra split floor / ceil between the sides, as Quantus), patches in
            row-major order, each ranked by its attribution sum over the zero-padded map.
        perturb_baseline: as `pixel_flipping` ("black", "white", "mean" of the image as
            perturbed so far, edge-padded as Quantus does, "uniform", a number, a tensor).
        incremental: copy ``k`` is copy ``k - 1`` with one more patch replaced, so with
            incremental inference (`interp_ext.incremental`, traced once with ``torch.fx``)
            each step recomputes only what that patch reaches, from the previous copy's
            activations; exact (float rounding aside). None (default): when the model has
            convolution weights, no hooks, can be planned, and the plan saves at least 1.2x
            the multiply-adds; True: always (a model that cannot be planned is an error);
            False: every copy in full.

    Returns:
        float64 curves ``(N, patches)``, or their areas ``(N,)``.
    """
    _, curves = _patch_metric(
        model, inputs, attributions, target, patch_size=patch_size, order="morf", regions=None,
        perturb_baseline=perturb_baseline, softmax=softmax, normalise=normalise, take_abs=abs,
        uniform_low=uniform_low, uniform_high=uniform_high, seed=seed, batch_size=batch_size, tune=tune,
        incremental=incremental, show_progress=show_progress, name="selectivity",
    )
    return trapezoid(curves) if return_auc_per_sample else curves


def _causal(model, inputs, attributions, target, *, insert, pixels_per_step, canvas, blur_sigma, blur_size,
            softmax, return_auc_per_sample, batch_size, tune, show_progress) -> torch.Tensor:
    check_model_and_inputs(model, inputs)
    n, c, h, w = inputs.shape
    a = check_attributions(attributions, inputs).sum(1, keepdim=True)
    pixels = h * w
    per_step = math.ceil(pixels / 224) if pixels_per_step is None else check_positive_int(pixels_per_step, "pixels_per_step")
    check_positive_int(batch_size, "batch_size")
    x = inputs.detach().contiguous()
    substrate = _substrate(canvas, x, blur_sigma, blur_size)
    steps = math.ceil(pixels / per_step)
    # pixel of rank r goes at step r // per_step + 1: copy 0 is the start, copy `steps` the end
    elem_steps = _pixel_major_ranks(a) // per_step + 1
    name = "insertion" if insert else "deletion"
    scorer = CurveModel(model, softmax, tune)  # outside inference mode: the folded copy is cached for gradients too
    with eval_mode(model), torch.inference_mode():
        idx, _ = scorer.targets(x, target)
        curves = replacement_curves(
            scorer, x, idx, elem_steps, substrate, steps + 1, insert=insert,
            batch_size=batch_size, show_progress=show_progress, desc=name,
        )
    curves = curves.clone()
    return curve_area(curves, over_fraction=True) if return_auc_per_sample else curves


def curve_area(curves: torch.Tensor, over_fraction: bool = False) -> torch.Tensor:
    """Each curve's area ``(N,)`` as ``return_auc_per_sample=True`` gives it: the
    trapezoidal rule with unit spacing (Quantus), or over the fraction of pixels in [0, 1]
    (RISE's deletion and insertion: spacing ``1 / steps``)."""
    steps = curves.shape[1] - 1
    return trapezoid(curves, 1.0 / steps if over_fraction and steps > 0 else 1.0)


def rise_taps(size: int, sigma: float) -> torch.Tensor:
    """RISE's blur taps ``(size,)`` float64: SciPy's ``gaussian_filter1d`` (radius
    ``int(4 sigma + 0.5)``) of a centred delta of ``size`` samples in "reflect" mode (the
    signal mirrored about its edges, ``d c b a | a b c d | d c b a``), so the Gaussian's
    tails fold back into the kernel."""
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1)
    weights = torch.exp(-0.5 * (offsets.double() / sigma) ** 2)
    weights /= weights.sum()
    taps = torch.zeros(size, dtype=torch.float64)
    for i in range(size):  # output i sums the weights of the offsets whose mirrored sample is the delta
        period = torch.remainder(i - offsets, 2 * size)
        mirrored = torch.where(period < size, period, 2 * size - 1 - period)
        taps[i] = weights[mirrored == size // 2].sum()
    return taps


def _substrate(canvas: Canvas, x: torch.Tensor, sigma: float, size: int) -> torch.Tensor:
    """RISE's substrate: "zeros", "blur" (Gaussian, zero padding), a number or a tensor."""
    if isinstance(canvas, str):
        if canvas == "zeros":
            return torch.zeros_like(x)
        if canvas == "blur":
            if not (isinstance(sigma, (int, float)) and sigma > 0):
                raise ValueError(f"blur_sigma must be a positive number, got {sigma!r}")
            check_positive_int(size, "blur_size")
            taps = rise_taps(size, float(sigma)).to(x.device, torch.float64 if x.dtype == torch.float64 else torch.float32)
            return ops.separable_filter(x, taps[None], taps[None], padding="zeros").contiguous()
        raise ValueError(f"canvas must be 'zeros', 'blur', a number or a tensor, got {canvas!r}")
    value = check_baseline(canvas, x, "canvas")
    if isinstance(value, float):
        return torch.full_like(x, value)
    return value.to(device=x.device, dtype=x.dtype).expand(x.shape).contiguous()


_CAUSAL_ARGS = """
    Args:
        model, inputs, target: as `pixel_flipping`.
        attributions: ``(N, 1 or C, H, W)`` or ``(N, H, W)``; channels are summed to rank pixels.
        pixels_per_step: pixels changed per step; default ``ceil(H * W / 224)`` (RISE's 224
            pixels per step on 224 x 224 images). The curve has ``steps + 1`` points, from
            the start to every pixel changed.
        canvas: {canvas}, "zeros", a number or a tensor broadcastable to the inputs.
        blur_sigma, blur_size: the "blur" canvas: RISE's kernel (``gkern``: a ``blur_size``
            delta filtered by SciPy's ``gaussian_filter`` of ``blur_sigma``, reflect mode,
            separable), applied with zero padding as RISE's ``conv2d``.
        softmax: score by class probability (RISE's) instead of the raw output.
        return_auc_per_sample: return each curve's area over the fraction of pixels in [0, 1]
            (RISE's: the trapezoidal rule with spacing ``1 / steps``).
        batch_size, tune, show_progress: as `pixel_flipping`.

    Returns:
        float64 curves ``(N, steps + 1)``, or their areas ``(N,)``.
    """


def deletion(
    model: nn.Module,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: Target = None,
    *,
    pixels_per_step: Optional[int] = None,
    canvas: Canvas = "zeros",
    blur_sigma: float = 5.0,
    blur_size: int = 11,
    softmax: bool = True,
    return_auc_per_sample: bool = False,
    batch_size: int = 64,
    tune: bool = True,
    show_progress: bool = False,
) -> torch.Tensor:
    """RISE's deletion curve (Petsiuk et al. 2018): the target's probability as pixels are
    removed, most important first, onto ``canvas`` (a low area is good).
    """
    return _causal(model, inputs, attributions, target, insert=False, pixels_per_step=pixels_per_step, canvas=canvas,
                   blur_sigma=blur_sigma, blur_size=blur_size, softmax=softmax,
                   return_auc_per_sample=return_auc_per_sample, batch_size=batch_size, tune=tune,
                   show_progress=show_progress)


def insertion(
    model: nn.Module,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: Target = None,
    *,
    pixels_per_step: Optional[int] = None,
    canvas: Canvas = "blur",
    blur_sigma: float = 5.0,
    blur_size: int = 11,
    softmax: bool = True,
    return_auc_per_sample: bool = False,
    batch_size: int = 64,
    tune: bool = True,
    show_progress: bool = False,
) -> torch.Tensor:
    """RISE's insertion curve (Petsiuk et al. 2018): the target's probability as pixels of
    the image are added to ``canvas`` (by default a blurred copy), most important first (a
    high area is good).
    """
    return _causal(model, inputs, attributions, target, insert=True, pixels_per_step=pixels_per_step, canvas=canvas,
                   blur_sigma=blur_sigma, blur_size=blur_size, softmax=softmax,
                   return_auc_per_sample=return_auc_per_sample, batch_size=batch_size, tune=tune,
                   show_progress=show_progress)


deletion.__doc__ += _CAUSAL_ARGS.replace("{canvas}", 'what removed pixels become: "zeros" (default, zero in the model\'s input space), "blur"')
insertion.__doc__ += _CAUSAL_ARGS.replace("{canvas}", 'what the image starts as: "blur" (default, a blurred copy)')
