"""Where an occluded copy differs from the clean image, layer by layer.

Boxes are per window, along one spatial axis at a time, as int64 tensors of half-open
intervals ``[lo, hi)``. A layer that reads ``k`` taps ``d`` apart with stride ``s`` and
``p`` leading padding changes output ``o`` exactly when its read span
``[o s - p, o s - p + (k - 1) d]`` meets the changed input ``[lo, hi)``, so the changed
outputs are ``ceil((lo + p - (k - 1) d) / s) <= o <= floor((hi - 1 + p) / s)``, clipped to
the map. A layer that reads in full (global pooling, linear, attention...) changes
everything after it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def _ceil_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return -torch.div(-a, b, rounding_mode="floor")


def conv_changed(lo: torch.Tensor, hi: torch.Tensor, kernel: int, stride: int, pad: int, dilation: int,
                 out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The outputs ``[lo', hi')`` a strided, dilated, padded window op changes when its
    input changes in ``[lo, hi)``: possibly empty (``lo' >= hi'``) when the stride skips
    the change (stride > kernel)."""
    first = _ceil_div(lo + pad - (kernel - 1) * dilation, stride).clamp(0, out_size)
    last = torch.div(hi - 1 + pad, stride, rounding_mode="floor").clamp(-1, out_size - 1)
    return first, torch.maximum(last + 1, first)


def union(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest interval holding both (an empty one holds nothing)."""
    (alo, ahi), (blo, bhi) = a, b
    a_empty, b_empty = alo >= ahi, blo >= bhi
    lo = torch.where(a_empty, blo, torch.where(b_empty, alo, torch.minimum(alo, blo)))
    hi = torch.where(a_empty, bhi, torch.where(b_empty, ahi, torch.maximum(ahi, bhi)))
    return lo, hi


def cap(lo: torch.Tensor, hi: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Projective-field thresholding (Krypton): intervals longer than ``limit`` shrink to
    ``limit``, centred where they were. Approximate: changes outside are ignored."""
    long = (hi - lo) > limit
    start = lo + torch.div(hi - lo - limit, 2, rounding_mode="floor")
    return torch.where(long, start, lo), torch.where(long, start + limit, hi)


@dataclass(frozen=True)
class Patch:
    """One axis of the patches a batch computes at one node: every window's patch has the
    same ``size`` (the largest changed interval, so one op runs on the whole batch) and
    starts at ``origin[window]``, inside the map and covering that window's change."""

    origin: torch.Tensor  # (P,) int64
    size: int
    extent: int  # the map's size along this axis


def patch_of(lo: torch.Tensor, hi: torch.Tensor, extent: int) -> Patch:
    """The patch axis covering each window's changed interval; at least one element
    (an unchanged window still computes one exact element)."""
    size = int((hi - lo).max().clamp(min=1, max=extent)) if lo.numel() else 1
    origin = torch.minimum(lo.clamp(min=0), torch.full_like(lo, extent - size))
    return Patch(origin, size, extent)
