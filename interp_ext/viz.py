"""Turn attributions into pictures: heat-map overlays and gradient images."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .writers import save_png  # noqa: F401  (pictures are saved as the job saves them)

# A perceptually ordered dark-to-bright colormap (black, purple, red, orange, pale yellow).
_ANCHORS = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32
)


def _interpolate_anchors(values: np.ndarray, anchors: np.ndarray = _ANCHORS) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB, linear between evenly spaced anchor colours."""
    v = values * (len(anchors) - 1)
    lo = np.floor(v).astype(np.int64).clip(0, len(anchors) - 2)
    frac = (v - lo)[..., None]
    return (anchors[lo] * (1 - frac) + anchors[lo + 1] * frac).round().astype(np.uint8)


# The colormap sampled at 4096 levels: a table lookup per pixel (10x faster than
# interpolating the anchors each time, which the job did for every map it drew); the
# colours differ from exact interpolation by at most one level.
_LEVELS = 4095
_TABLE = _interpolate_anchors(np.linspace(0.0, 1.0, _LEVELS + 1))


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape; NaN as 0) -> uint8 RGB of shape values.shape + (3,)."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)
    return _TABLE[(v * _LEVELS + 0.5).astype(np.intp)]


def normalize_map(heat: torch.Tensor, percentile: float = 99.5) -> np.ndarray:
    """(H, W) map -> [0, 1] numpy, scaled by its `percentile` so one hot pixel does
    not wash the rest out."""
    h = heat.detach().float().cpu().numpy()
    h = h - h.min()
    top = np.percentile(h, percentile)
    return np.clip(h / top, 0, 1) if top > 0 else np.zeros_like(h)


def overlay(image: Image.Image, heat: torch.Tensor, alpha: float = 0.55) -> Image.Image:
    """Blend a colour-mapped (H, W) map over an RGB image of the same size."""
    if tuple(heat.shape) != (image.height, image.width):
        raise ValueError(f"heat must have the image's shape {(image.height, image.width)}, got {tuple(heat.shape)}")
    return _blend(image, colormap(normalize_map(heat)), alpha)


def _blend(image: Image.Image, colour: np.ndarray, alpha: float) -> Image.Image:
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    return Image.fromarray((base * (1 - alpha) + colour.astype(np.float32) * alpha).round().astype(np.uint8))


# A diverging colormap for signed maps: blue (negative), light grey (zero), red (positive).
_DIVERGING_ANCHORS = np.array([[59, 76, 192], [141, 176, 254], [221, 221, 221], [244, 154, 123], [180, 4, 38]],
                              dtype=np.float32)
_DIVERGING = _interpolate_anchors(np.linspace(0.0, 1.0, _LEVELS + 1), _DIVERGING_ANCHORS)


def diverging(values: np.ndarray) -> np.ndarray:
    """Values in [-1, 1] (any shape; NaN as 0) -> uint8 RGB, zero at the centre colour."""
    v = np.clip(np.nan_to_num(values, nan=0.0), -1.0, 1.0)
    return _DIVERGING[((v + 1) * (_LEVELS / 2) + 0.5).astype(np.intp)]


def normalize_signed(heat: torch.Tensor, percentile: float = 99.5) -> np.ndarray:
    """(H, W) signed map -> [-1, 1] numpy, zero kept at zero, scaled by the `percentile` of
    its magnitude (one extreme pixel does not wash the rest out)."""
    h = heat.detach().float().cpu().numpy()
    top = np.percentile(np.abs(h), percentile)
    return np.clip(h / top, -1, 1) if top > 0 else np.zeros_like(h)


def signed_overlay(image: Image.Image, heat: torch.Tensor, alpha: float = 0.55) -> Image.Image:
    """Blend a signed (H, W) map (occlusion, Shapley) over an RGB image of the same size
    with the diverging colormap, so negative, zero and positive differ."""
    if tuple(heat.shape) != (image.height, image.width):
        raise ValueError(f"heat must have the image's shape {(image.height, image.width)}, got {tuple(heat.shape)}")
    return _blend(image, diverging(normalize_signed(heat)), alpha)


def gradient_image(grad: torch.Tensor) -> Image.Image:
    """(3, H, W) signed gradient -> RGB picture (zero-centred, scaled to +-3 std),
    the usual way guided-backprop and deconvnet results are shown."""
    g = grad.detach().float().cpu()
    g = g - g.mean()
    g = g / (3 * g.std() + 1e-12)
    arr = ((g.clamp(-1, 1) * 0.5 + 0.5) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr)


def to_pil(image01: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> RGB PIL image."""
    arr = (image01.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)
