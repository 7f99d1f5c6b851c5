"""Feature inversion (Mahendran & Vedaldi): an image whose features at a layer match
given ones, regularised by total variation (`ops.total_variation`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from .. import ops
from ..attr._common import in_eval_mode
from ._common import LayerTap, ModelLike, pixel_images, preprocessed


@dataclass
class InversionResult:
    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    inputs: torch.Tensor  # the same in model space
    feature_distance: torch.Tensor  # (steps + 1, N): ||phi(x) - phi0||^2 / ||phi0||^2 before each step and at the end


@in_eval_mode
def invert_features(
    model: ModelLike,
    image: Optional[torch.Tensor] = None,
    layer: str = "",
    *,
    features: Optional[torch.Tensor] = None,
    image_size: Optional[int] = None,
    tv_weight: float = 1e-3,
    tv_beta: float = 2.0,
    steps: int = 200,
    lr: float = 0.05,
    seed: Optional[int] = 0,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    show_progress: bool = False,
) -> InversionResult:
    """Reconstruct images from a layer's features: minimise
    ``||phi(x) - phi0||^2 / ||phi0||^2 + tv_weight * TV_beta(x) / (C H W)`` over x with
    Adam, from small noise around the mean image. ``phi0`` comes from ``image``
    ((N, 3, H, W) in [0, 1]) or is given as ``features``. The forward pass stops at the
    layer (the rest of the network is not run)."""
    if (image is None) == (features is None):
        raise ValueError("give exactly one of image= (to take its features) or features=")
    if steps < 1 or lr <= 0 or tv_weight < 0 or not tv_beta > 0:
        raise ValueError(f"steps must be >= 1, lr > 0, tv_weight >= 0, tv_beta > 0; got {steps}, {lr}, {tv_weight}, {tv_beta}")
    pre = preprocessed(model, mean, std)
    tap = LayerTap(pre.model, layer)
    device = pre.mean.device
    if image is not None:
        image = pixel_images(image, pre, "image", single_ok=True)
        size = image.shape[2:]
        with torch.no_grad():
            target = tap(pre.to_model(image))
    else:
        if not isinstance(features, torch.Tensor) or features.dim() < 2 or not bool(torch.isfinite(features).all()):
            raise ValueError(f"features must be a finite (N, ...) tensor of the layer's output, got "
                             f"{getattr(features, 'shape', type(features).__name__)}")
        target = features.to(device).float()
        side = image_size or pre.input_size
        size = (side, side)
    n = target.shape[0]
    norm = target.flatten(1).square().sum(1).clamp_min(1e-12)
    gen = torch.Generator().manual_seed(seed) if seed is not None else torch.Generator()
    x = pre.to_model(0.5 + 0.01 * torch.randn(n, 3, *size, generator=gen)).to(device).requires_grad_(True)
    optimiser = torch.optim.Adam([x], lr=lr)
    lo, hi = pre.bounds()
    pixels = 3 * size[0] * size[1]
    distances = []
    for _ in tqdm(range(steps), desc="feature inversion", disable=not show_progress):
        optimiser.zero_grad(set_to_none=True)
        with torch.enable_grad():
            phi = tap(x)
            if phi.shape != target.shape:
                raise ValueError(f"features must have the layer's shape {tuple(phi.shape)}, got {tuple(target.shape)}")
            dist = (phi - target).flatten(1).square().sum(1) / norm
            loss = dist.sum() + tv_weight * ops.total_variation(x, tv_beta).sum() / pixels
            loss.backward()
        distances.append(dist.detach())
        optimiser.step()
        with torch.no_grad():
            x.copy_(torch.maximum(torch.minimum(x, hi), lo))
    with torch.no_grad():
        distances.append((tap(x) - target).flatten(1).square().sum(1) / norm)
    x = x.detach()
    return InversionResult(pre.to_pixels(x).clamp(0, 1), x, torch.stack(distances))
