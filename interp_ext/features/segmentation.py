"""Segmentation without supervision: GrabCut (OpenCV) seeded from a saliency or Grad-CAM map."""
from __future__ import annotations

from typing import Union

import numpy as np
import torch
from PIL import Image

from .._extras import require


def saliency_segmentation(image: Union[Image.Image, torch.Tensor], saliency_map: torch.Tensor, *,
                          foreground_percentile: float = 90.0, background_percentile: float = 30.0,
                          iterations: int = 5, alpha: float = 0.5) -> tuple[torch.Tensor, Image.Image]:
    """A foreground mask ``(H, W)`` bool and an overlay. The map seeds GrabCut: pixels above
    its ``foreground_percentile`` are sure foreground, below ``background_percentile`` sure
    background, the rest probable foreground (upper half of the range) or background; GrabCut
    then refines along the image's colour statistics and edges."""
    cv2 = require("cv2", "saliency_segmentation")

    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be (3, H, W) in [0, 1] or a PIL image, got {tuple(image.shape)}")
        rgb = (image.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    else:
        rgb = np.array(image.convert("RGB"))
    sal = saliency_map.detach().float().cpu().numpy()
    if sal.shape != rgb.shape[:2]:
        raise ValueError(f"saliency_map must have the image's (H, W) = {rgb.shape[:2]}, got {sal.shape}")
    if not 0 <= background_percentile < foreground_percentile <= 100:
        raise ValueError("need 0 <= background_percentile < foreground_percentile <= 100")
    lo, hi = np.percentile(sal, [background_percentile, foreground_percentile])
    mid = (lo + hi) / 2
    mask = np.where(sal >= hi, cv2.GC_FGD, np.where(sal <= lo, cv2.GC_BGD,
                                                   np.where(sal >= mid, cv2.GC_PR_FGD, cv2.GC_PR_BGD))).astype(np.uint8)
    if not (mask == cv2.GC_FGD).any() or not (mask == cv2.GC_BGD).any():
        raise ValueError("saliency_map is constant: no foreground or background seeds")
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    fg = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    tint = np.array([255, 64, 64], np.float32)
    over = rgb.astype(np.float32)
    over[fg] = over[fg] * (1 - alpha) + tint * alpha
    over[~fg] *= 0.5
    return torch.from_numpy(fg), Image.fromarray(over.round().astype(np.uint8))
