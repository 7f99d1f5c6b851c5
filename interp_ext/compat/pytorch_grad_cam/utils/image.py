"""pytorch-grad-cam's ``utils.image`` without OpenCV: ``show_cam_on_image``,
``preprocess_image``, ``deprocess_image`` and ``scale_cam_image``.

``show_cam_on_image`` colours the map with the JET colormap computed from its
definition (``r = clip(1.5 - |4x - 3|)``, ``g = clip(1.5 - |4x - 2|)``,
``b = clip(1.5 - |4x - 1|)`` at ``x = i / 255``, float32, rounded): OpenCV's
``COLORMAP_JET`` table is within one level of it (63 of its 768 entries differ by 1),
so an overlay differs from pytorch-grad-cam's by at most 1-2 levels of 255.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

COLORMAP_JET = 2  # OpenCV's constant, the only colormap offered here


def _jet_table() -> np.ndarray:
    """(256, 3) uint8 RGB."""
    x = np.arange(256, dtype=np.float32) / np.float32(255)
    one, four = np.float32(1.5), np.float32(4)
    chans = [np.clip(one - np.abs(four * x - np.float32(c)), 0, 1) for c in (3, 2, 1)]
    return np.round(np.stack(chans, 1) * np.float32(255)).astype(np.uint8)


_JET_RGB = _jet_table()


def show_cam_on_image(img: np.ndarray, mask: np.ndarray, use_rgb: bool = False, colormap: int = COLORMAP_JET,
                      image_weight: float = 0.5) -> np.ndarray:
    """``img`` (H, W, 3) float in [0, 1] (RGB, or BGR with ``use_rgb=False``) overlaid with
    ``mask`` (H, W) in [0, 1] coloured by JET: ``image_weight * img + (1 - image_weight) *
    heatmap``, divided by its maximum, as uint8. The heat map is BGR unless ``use_rgb``."""
    img = np.asarray(img)
    mask = np.asarray(mask)
    if isinstance(colormap, bool) or colormap != COLORMAP_JET:
        raise ValueError(f"colormap: only COLORMAP_JET ({COLORMAP_JET}) is available without OpenCV, got {colormap!r}")
    if mask.ndim != 2:
        raise ValueError(f"mask must be one (H, W) map, got shape {mask.shape}")
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[:2] != mask.shape:
        raise ValueError(f"img must be (H, W, 3) with the mask's H, W {mask.shape}, got shape {img.shape}")
    if np.max(img) > 1:
        raise ValueError("img: the input image should be np.float32 in the range [0, 1]")
    if not 0 <= image_weight <= 1:
        raise ValueError(f"image_weight should be in the range [0, 1], got {image_weight}")
    levels = np.uint8(255 * mask)  # truncation, as NumPy's cast (and theirs)
    heat = _JET_RGB[levels] if use_rgb else _JET_RGB[levels][..., ::-1]
    heat = np.float32(heat) / 255
    cam = (1 - image_weight) * heat + image_weight * img
    cam = cam / np.max(cam)
    return np.uint8(255 * cam)


def preprocess_image(img: np.ndarray, mean: Sequence[float] = (0.5, 0.5, 0.5),
                     std: Sequence[float] = (0.5, 0.5, 0.5)) -> torch.Tensor:
    """(H, W, C) array -> normalised (1, C, H, W) tensor (uint8 is scaled by 1/255 first, as
    torchvision's ``ToTensor``; float arrays keep their values and dtype)."""
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"img must be an (H, W, C) array, got shape {arr.shape}")
    t = torch.from_numpy(arr.transpose(2, 0, 1).copy())
    t = t.float().div(255) if t.dtype == torch.uint8 else t
    if not t.is_floating_point():
        raise TypeError(f"img must be uint8 or floating point, got {arr.dtype}")
    m = torch.as_tensor(mean, dtype=t.dtype).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=t.dtype).view(-1, 1, 1)
    return ((t - m) / s).unsqueeze(0)


def deprocess_image(img: np.ndarray) -> np.ndarray:
    """A gradient image for display: centred, scaled to std 0.1 around 0.5, clipped, uint8."""
    img = img - np.mean(img)
    img = img / (np.std(img) + 1e-5)
    img = img * 0.1 + 0.5
    return np.uint8(np.clip(img, 0, 1) * 255)


def scale_cam_image(cam: np.ndarray, target_size: Optional[Sequence[int]] = None) -> np.ndarray:
    """Each (h, w) map of ``cam`` (N, h, w) min-max scaled (``(m - min) / (max - min +
    1e-7)``) and, with ``target_size=(W, H)`` (OpenCV's order), bilinearly resized: float32."""
    t = torch.as_tensor(np.asarray(cam, dtype=np.float32))
    if t.dim() != 3:
        raise ValueError(f"cam must be (N, h, w) maps, got shape {tuple(t.shape)}")
    lo = t.amin((1, 2), keepdim=True)
    t = t - lo
    t = t / (1e-7 + t.amax((1, 2), keepdim=True))
    if target_size is not None:
        w, h = int(target_size[0]), int(target_size[1])
        t = F.interpolate(t[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    return t.numpy().astype(np.float32)
