"""Turn attributions into pictures: heat-map overlays (a dark-to-bright colormap), signed
maps in a diverging colormap centred on zero (alone or over the image), and the colour
bars that explain them."""
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


def gradient_image(grad: torch.Tensor, percentile: float = 98.0) -> Image.Image:
    """A signed map on its own, (3, H, W) (summed over channels) or (H, W) -> RGB picture
    in the diverging colormap centred on zero: blue negative, light grey zero, red
    positive, scaled by the `percentile` of the magnitude (:func:`normalize_signed`; these
    maps are sparse and heavy-tailed, so the top 2% saturate).
    How the job draws guided backprop, deconvnet and guided Grad-CAM: zero stays grey
    whatever the map's mean (the mean-centred RGB picture of earlier versions showed a
    map's mean as grey and its minimum as black, so negative and zero looked alike)."""
    g = grad.detach().float()
    if g.dim() == 3:
        g = g.sum(0)
    if g.dim() != 2:
        raise ValueError(f"grad must be (3, H, W) or (H, W), got {tuple(grad.shape)}")
    return Image.fromarray(diverging(normalize_signed(g, percentile)))


def colorbar(kind: str, width: int = 128, height: int = 10) -> Image.Image:
    """A horizontal colour bar of the pictures of `kind`: "heat" (the heat-map colormap,
    low to high) or "signed" (the diverging colormap, negative to positive, zero in the
    middle)."""
    values = np.linspace(0.0, 1.0, width) if kind == "heat" else np.linspace(-1.0, 1.0, width)
    row = colormap(values) if kind == "heat" else diverging(values)
    return Image.fromarray(np.ascontiguousarray(np.broadcast_to(row[None], (height, width, 3))))


def css_gradient(kind: str, stops: int = 11) -> str:
    """The colour bar of `kind` ("heat" or "signed") as a CSS ``linear-gradient``, for
    pages that show the pictures (the job's gallery)."""
    values = np.linspace(0.0, 1.0, stops)
    colours = colormap(values) if kind == "heat" else diverging(values * 2 - 1)
    parts = [f"rgb({r},{g},{b}) {100 * v:.0f}%" for (r, g, b), v in zip(colours.tolist(), values)]
    return "linear-gradient(to right, " + ", ".join(parts) + ")"


def to_pil(image01: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> RGB PIL image."""
    arr = (image01.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)
