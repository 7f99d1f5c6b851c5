"""Localisation: does an attribution map point at the object it should explain?

`pointing_game` (Zhang et al. 2016, "Top-Down Neural Attention by Excitation Backprop") asks
whether the map's maximum lies on the object; `energy_pointing_game` (Wang et al. 2020,
Score-CAM) measures the share of the map's positive mass inside it. The object of each
image is a mask or a box. Maps are reduced to one channel by summing their channels, and
everything is computed in float64 on the maps' device. No model is run.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F

Masks = Union[torch.Tensor, Sequence[Sequence[int]]]


def _check_maps(attributions: torch.Tensor, name: str = "attributions") -> torch.Tensor:
    """``(N, C, H, W)`` or ``(N, H, W)``, real, finite -> ``(N, H, W)`` float64, channels summed."""
    if not isinstance(attributions, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(attributions).__name__}")
    if attributions.is_complex():
        raise TypeError(f"{name} must hold real values, got dtype {attributions.dtype}")
    if attributions.dim() not in (3, 4) or attributions.numel() == 0:
        raise ValueError(
            f"{name} must be non-empty maps (N, C, H, W) or (N, H, W), got shape {tuple(attributions.shape)}"
        )
    a = attributions.detach().to(torch.float64)
    a = a.sum(1) if a.dim() == 4 else a
    if not bool(torch.isfinite(a).all()):
        bad = (~torch.isfinite(a)).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"{name} holds NaN or inf values (images {bad}): every value must be finite")
    return a


def _check_masks(masks: Masks, n: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """The object of each image as a bool ``(N, H, W)``: from a 0/1 mask ``(N, 1, H, W)`` /
    ``(N, H, W)`` or from boxes ``(N, 4)`` (``x0, y0`` inclusive, ``x1, y1`` exclusive)."""
    if isinstance(masks, (list, tuple)):
        try:
            masks = torch.as_tensor(masks)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError("masks must be a tensor of masks or boxes (N, 4), or a list of boxes [x0, y0, x1, y1]") from None
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"masks must be a torch.Tensor (masks or boxes), got {type(masks).__name__}")
    if masks.is_complex():
        raise TypeError(f"masks must hold real values, got dtype {masks.dtype}")
    masks = masks.detach().to(device)
    if masks.dim() == 2:
        return _box_masks(masks, n, h, w)
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3 or tuple(masks.shape) != (n, h, w):
        raise ValueError(
            f"masks must be masks ({n}, 1, {h}, {w}) or ({n}, {h}, {w}), or boxes ({n}, 4), for attributions of "
            f"{n} images of {h} x {w}, got shape {tuple(masks.shape)}"
        )
    if masks.dtype != torch.bool:
        binary = (masks == 0) | (masks == 1)
        if not bool(binary.all()):
            bad = (~binary).flatten(1).any(1).nonzero().flatten().tolist()
            raise ValueError(f"masks must hold only 0 and 1 (or be bool), images {bad} hold other values")
        masks = masks == 1
    empty = ~masks.flatten(1).any(1)
    if bool(empty.any()):
        raise ValueError(
            f"masks of images {empty.nonzero().flatten().tolist()} cover no pixel: every image needs an object"
        )
    return masks


def _box_masks(boxes: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    if boxes.shape != (n, 4):
        raise ValueError(f"masks as boxes must have shape ({n}, 4) (x0, y0, x1, y1), got {tuple(boxes.shape)}")
    if boxes.dtype == torch.bool:
        raise TypeError("masks as boxes must hold integer pixel coordinates, got dtype torch.bool")
    if boxes.is_floating_point():
        if not bool((torch.isfinite(boxes) & (boxes == boxes.round())).all()):
            raise ValueError("masks as boxes must hold whole pixel coordinates (x0, y0, x1, y1)")
    b = boxes.long()
    x0, y0, x1, y1 = b.unbind(1)
    bad = (x0 < 0) | (y0 < 0) | (x1 > w) | (y1 > h) | (x0 >= x1) | (y0 >= y1)
    if bool(bad.any()):
        idx = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"masks: the boxes of images {idx} ({b[idx].tolist()}) are empty or leave the {h} x {w} image: "
            f"each needs 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h} (x1, y1 exclusive)"
        )
    cols = torch.arange(w, device=b.device)
    rows = torch.arange(h, device=b.device)
    inside_x = (cols[None] >= x0[:, None]) & (cols[None] < x1[:, None])  # (N, W)
    inside_y = (rows[None] >= y0[:, None]) & (rows[None] < y1[:, None])  # (N, H)
    return inside_y[:, :, None] & inside_x[:, None, :]


def _dilate(masks: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Every pixel whose centre lies within ``tolerance`` pixels (Euclidean) of the mask."""
    r = int(math.floor(tolerance))
    if r == 0:
        return masks
    offsets = torch.arange(-r, r + 1, device=masks.device, dtype=torch.float64)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= tolerance**2).float()
    # float32 counts of 0/1 pixels are exact (at most (2r + 1)^2 per sum)
    hits = F.conv2d(masks[:, None].float(), disk[None, None], padding=r)
    return hits[:, 0] > 0.5


def _check_tolerance(tolerance) -> float:
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)):
        raise TypeError(f"tolerance must be a number of pixels, got {type(tolerance).__name__}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number of pixels >= 0, got {tolerance!r}")
    return float(tolerance)


def pointing_game(attributions: torch.Tensor, masks: Masks, *, tolerance: float = 0) -> torch.Tensor:
    """The pointing game (Zhang et al. 2016): a hit when the map's maximum lies on the object.

    Ties: every pixel that attains the maximum counts, and the image is a hit when any of
    them lies on the (tolerance-widened) object. This is Quantus's rule; note that it makes
    a constant map a hit on every image. With ``tolerance=0`` the result equals Quantus's
    ``PointingGame(weighted=False, abs=False, normalise=False)`` on one-channel maps and
    masks ``(N, 1, H, W)``; its default ``normalise=True`` divides the maps by their largest
    magnitude, which keeps their order (rounding could at most tie values a last bit apart).

    Args:
        attributions: maps ``(N, C, H, W)`` or ``(N, H, W)``; channels are summed.
            Pass ``attributions.abs()`` to play with the magnitude of a signed map.
        masks: the object of each image: a bool or 0/1 mask ``(N, 1, H, W)`` or
            ``(N, H, W)``, or boxes ``(N, 4)`` (a tensor or a list) in whole pixel
            coordinates ``(x0, y0, x1, y1)``, ``x0, y0`` inclusive and ``x1, y1`` exclusive
            (the box covers ``mask[y0:y1, x0:x1]``).
        tolerance: pixels around the object that still count as a hit: a pixel whose centre
            lies within this Euclidean distance of an object pixel (Zhang et al. use 15).

    Returns:
        bool ``(N,)``: the hits.

    Raises:
        ValueError: maps that are not ``(N, C, H, W)`` / ``(N, H, W)`` or hold NaN or inf;
            masks of another size or holding values other than 0 and 1; a mask that covers
            no pixel or a box that is empty or leaves the image (the images are named);
            a negative ``tolerance``.
    """
    a = _check_maps(attributions)
    n, h, w = a.shape
    objects = _check_masks(masks, n, h, w, a.device)
    objects = _dilate(objects, _check_tolerance(tolerance))
    top = a == a.amax((1, 2), keepdim=True)
    return (top & objects).flatten(1).any(1)


def energy_pointing_game(attributions: torch.Tensor, masks: Masks) -> torch.Tensor:
    """The energy-based pointing game (Wang et al. 2020, Score-CAM): the share of the map's
    positive mass that lies on the object, ``sum(relu(a) * mask) / sum(relu(a))``.

    The result equals Quantus's ``AttributionLocalisation(abs=False,
    positive_attributions=True, weighted=False)`` on one-channel maps and masks
    ``(N, 1, H, W)``, to its ``1e-9`` added to the denominator (with its default
    ``abs=True`` it is ours of ``attributions.abs()``). A map without positive mass has no
    share: its score is NaN (Quantus gives 0 there).

    Args:
        attributions: maps ``(N, C, H, W)`` or ``(N, H, W)``; channels are summed before
            the negative part is dropped.
        masks: the object of each image, as `pointing_game` takes it (a mask, or boxes
            ``(x0, y0, x1, y1)`` with ``x1, y1`` exclusive).

    Returns:
        float64 ``(N,)`` in ``[0, 1]``, NaN for a map with no positive value.

    Raises:
        ValueError: as `pointing_game`.
    """
    a = _check_maps(attributions)
    n, h, w = a.shape
    objects = _check_masks(masks, n, h, w, a.device)
    energy = a.clamp(min=0)
    total = energy.sum((1, 2))
    inside = (energy * objects).sum((1, 2))
    return torch.where(total > 0, inside / torch.where(total > 0, total, 1.0), torch.nan)
