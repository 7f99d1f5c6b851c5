"""Gradient ascent in image space: class visualisation (Simonyan et al., with the
Yosinski et al. regularisers) and DeepDream (Mordvintsev et al.)."""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import ops
from ..attr._common import check_index_range, in_eval_mode
from ._common import AscentResult, LayerTap, ModelLike, indices_per_image, pixel_images, preprocessed

Target = Union[int, Sequence[int], torch.Tensor]


def _objective(pre, target, layer, channel, neuron, batch: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """(N,) objective of a model-space batch: a class score (before softmax), or a layer's
    channel (mean activation) or single neuron. Arguments are checked here, before any
    model call, except the bounds that need the model's output (on the first call)."""
    if layer is None:
        t = indices_per_image(target, batch, "target")

        def score(x):
            logits = pre.model(x)
            check_index_range(t, logits.shape[1])
            return logits.gather(1, t.to(x.device)[:, None])[:, 0]

        return score
    tap = LayerTap(pre.model, layer)
    channels = indices_per_image(channel, batch, "channel")
    if not (neuron is None or neuron == "center" or (
            isinstance(neuron, (tuple, list)) and len(neuron) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in neuron))):
        raise ValueError(f'neuron must be None, "center" or (y, x) with ints >= 0, got {neuron!r}')

    def activation(x):
        act = tap(x)
        if act.dim() != 4:
            raise ValueError(f"layer {tap.name!r} must output (N, C, h, w), got {tuple(act.shape)}")
        check_index_range(channels, act.shape[1], "channel", f"layer {tap.name!r}'s {act.shape[1]} channels")
        sel = act[torch.arange(batch, device=x.device), channels.to(x.device)]  # (N, h, w)
        if neuron is None:
            return sel.mean(dim=(1, 2))
        y, xx = (act.shape[2] // 2, act.shape[3] // 2) if neuron == "center" else neuron
        if y >= act.shape[2] or xx >= act.shape[3]:
            raise ValueError(f"neuron (y, x) must be inside layer {tap.name!r}'s {act.shape[2]}x{act.shape[3]} map, got {neuron!r}")
        return sel[:, y, xx]

    return activation


def _jittered_ascent_direction(objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, jitter: int,
                               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of ``objective(x)`` (N,) at a randomly rolled copy of x, rolled back
    and divided by its mean magnitude per image (so a step size is in input units); and
    the objective's value."""
    oy, ox = torch.randint(-jitter, jitter + 1, (2,), generator=gen).tolist() if jitter > 0 else (0, 0)
    xj = x.roll((oy, ox), dims=(2, 3)).detach().requires_grad_(True)
    with torch.enable_grad():
        obj = objective(xj)
        (grad,) = torch.autograd.grad(obj.sum(), xj)
    grad = grad.roll((-oy, -ox), dims=(2, 3))
    return grad / (grad.abs().mean(dim=(1, 2, 3), keepdim=True) + 1e-12), obj.detach()


@in_eval_mode
def class_visualization(
    model: ModelLike,
    target: Optional[Target] = None,
    *,
    layer: Optional[str] = None,
    channel: Union[None, int, Sequence[int]] = None,
    neuron: Union[None, str, tuple[int, int]] = None,
    batch: Optional[int] = None,
    steps: int = 200,
    lr: float = 0.1,
    image_size: Optional[int] = None,
    init: str = "zeros",
    jitter: int = 8,
    decay: float = 1e-3,
    blur_every: int = 4,
    blur_sigma: float = 0.5,
    grad_percentile: float = 0.0,
    norm_percentile: float = 0.0,
    contribution_percentile: float = 0.0,
    seed: Optional[int] = 0,
    history_every: int = 0,
    callback: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    show_progress: bool = False,
) -> AscentResult:
    """Images that maximise a class score (before softmax) or a layer's channel / neuron,
    by gradient ascent with jitter and the Yosinski et al. regularisers (L2 decay, blur
    every ``blur_every`` steps, clipping of small gradients, small-norm and
    small-contribution pixels; `ops.regularize_step_` and `ops.gaussian_blur`).

    ``target``: a class or one per image (several classes in one batch). ``layer`` +
    ``channel`` (+ ``neuron=(y, x)`` or ``"center"``) visualise an intermediate feature
    instead. Each step's gradient is divided by its mean magnitude per image, so ``lr``
    is in model-input units per step. Pixels stay in the valid [0, 1] range. ``init``:
    ``"zeros"`` (the mean image) or ``"random"``; ``seed`` fixes the noise and the jitter.
    ``callback(step, images01, objective)`` runs every step; ``history_every`` keeps a CPU
    copy of the images every so many steps.
    """
    if steps < 1 or lr <= 0:
        raise ValueError(f"steps must be >= 1 and lr > 0, got steps={steps}, lr={lr}")
    if init not in ("zeros", "random"):
        raise ValueError(f'init must be "zeros" or "random", got {init!r}')
    if jitter < 0 or blur_every < 0 or history_every < 0 or decay < 0:
        raise ValueError("jitter, blur_every, history_every and decay must be >= 0, "
                         f"got {jitter}, {blur_every}, {history_every}, {decay}")
    if blur_every > 0 and not blur_sigma > 0:
        raise ValueError(f"blur_sigma must be > 0 (or blur_every=0 for no blur), got {blur_sigma}")
    for name, q in (("grad_percentile", grad_percentile), ("norm_percentile", norm_percentile),
                    ("contribution_percentile", contribution_percentile)):
        if not 0 <= q < 100:
            raise ValueError(f"{name} must be in [0, 100), got {q}")
    if (layer is None) == (target is None) or (layer is not None and channel is None):
        raise ValueError("give target (class scores) or layer and channel (an intermediate feature), not both, "
                         f"got target={target!r}, layer={layer!r}, channel={channel!r}")
    if neuron is not None and layer is None:
        raise ValueError(f"neuron: a neuron belongs to a layer objective (layer=, channel=), got neuron={neuron!r}")
    pre = preprocessed(model, mean, std)
    if batch is None:
        batch = len(torch.as_tensor(target if layer is None else channel).flatten())
    size = image_size or pre.input_size
    objective_fn = _objective(pre, target, layer, channel, neuron, batch)
    device = pre.mean.device
    gen = torch.Generator(device="cpu")
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()
    x = torch.zeros(batch, 3, size, size, device=device)
    if init == "random":
        x = pre.to_model(0.5 + 0.1 * torch.randn(batch, 3, size, size, generator=gen).to(device))
    lo, hi = pre.bounds()
    trace, history = [], []
    for step in tqdm(range(steps), desc="class visualisation", disable=not show_progress):
        grad, obj = _jittered_ascent_direction(objective_fn, x, jitter, gen)
        ops.regularize_step_(x, grad, lr, decay=decay, grad_percentile=grad_percentile,
                             norm_percentile=norm_percentile, contribution_percentile=contribution_percentile)
        if blur_every > 0 and (step + 1) % blur_every == 0:
            x = ops.gaussian_blur(x, blur_sigma)
        x = torch.maximum(torch.minimum(x, hi), lo)
        trace.append(obj.detach())
        if callback is not None or (history_every and (step + 1) % history_every == 0):
            images = pre.to_pixels(x).clamp(0, 1)
            if callback is not None:
                callback(step, images, obj.detach())
            if history_every and (step + 1) % history_every == 0:
                history.append((step + 1, images.detach().cpu()))
    return AscentResult(pre.to_pixels(x).clamp(0, 1).detach(), x.detach(), torch.stack(trace), history)


@in_eval_mode
def deep_dream(
    model: ModelLike,
    image: torch.Tensor,
    layer: str,
    *,
    steps: int = 20,
    octaves: int = 3,
    octave_scale: float = 1.4,
    lr: float = 0.02,
    jitter: int = 16,
    seed: Optional[int] = 0,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    show_progress: bool = False,
) -> AscentResult:
    """Amplify what a layer sees in ``image`` ((N, 3, H, W) or (3, H, W) in [0, 1]): the
    gradient of the layer is set to its own activation (ascent on half its squared norm),
    over ``octaves`` scales (smallest first, ``octave_scale`` apart), detail carried from
    each scale to the next. The objective trace is the layer's activation norm per image."""
    if octaves < 1 or octave_scale <= 1 or steps < 1 or lr <= 0 or jitter < 0:
        raise ValueError("need octaves >= 1, octave_scale > 1, steps >= 1, lr > 0 and jitter >= 0, "
                         f"got {octaves}, {octave_scale}, {steps}, {lr}, {jitter}")
    pre = preprocessed(model, mean, std)
    image = pixel_images(image, pre, "image", single_ok=True)
    tap = LayerTap(pre.model, layer)
    gen = torch.Generator().manual_seed(seed) if seed is not None else torch.Generator()
    base = pre.to_model(image)
    h, w = base.shape[2:]
    sizes = [(max(1, round(h / octave_scale**k)), max(1, round(w / octave_scale**k))) for k in range(octaves - 1, -1, -1)]
    lo, hi = pre.bounds()
    detail = torch.zeros_like(F.interpolate(base, size=sizes[0], mode="bilinear", align_corners=False))
    trace = []
    for size in tqdm(sizes, desc="DeepDream octaves", disable=not show_progress):
        octave_base = F.interpolate(base, size=size, mode="bilinear", align_corners=False)
        detail = F.interpolate(detail, size=size, mode="bilinear", align_corners=False)
        x = octave_base + detail
        for _ in range(steps):
            # half the squared norm: its gradient is the layer's own activation sent back
            grad, half_sq = _jittered_ascent_direction(lambda t: 0.5 * tap(t).flatten(1).square().sum(1), x, jitter, gen)
            x = torch.maximum(torch.minimum(x + lr * grad, hi), lo)
            trace.append((2 * half_sq).sqrt())
        detail = x - octave_base
    return AscentResult(pre.to_pixels(x).clamp(0, 1).detach(), x.detach(), torch.stack(trace), [])
