"""Pieces shared by the feature-visualisation methods: the model with its preprocessing,
pixel bounds, layer objectives and early-stopping forward passes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..layers import LayerCapture, resolve_layers
from ..models import LoadedModel

ModelLike = Union[LoadedModel, nn.Module]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Preprocessed:
    """A model and the per-channel normalisation its inputs get (model space = (x - mean) / std
    of [0, 1] RGB)."""

    model: nn.Module
    mean: torch.Tensor  # (1, 3, 1, 1)
    std: torch.Tensor
    input_size: int

    def to_model(self, x01: torch.Tensor) -> torch.Tensor:
        return (x01 - self.mean) / self.std

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Model-space values of pixel 0 and 1, per channel."""
        return self.to_model(torch.zeros_like(self.mean)), self.to_model(torch.ones_like(self.mean))


def preprocessed(model: ModelLike, mean: Optional[Sequence[float]], std: Optional[Sequence[float]], device=None) -> Preprocessed:
    if isinstance(model, LoadedModel):
        net, m, s, size = model.model, mean or model.mean, std or model.std, model.input_size
    elif isinstance(model, nn.Module):
        net, m, s, size = model, mean or IMAGENET_MEAN, std or IMAGENET_STD, 224
    else:
        raise TypeError(f"model must be an nn.Module or a models.LoadedModel, got {type(model).__name__}")
    p = next(net.parameters(), None)
    dev = device or (p.device if p is not None else torch.device("cpu"))
    as_t = lambda v: torch.tensor(list(v), dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    return Preprocessed(net, as_t(m), as_t(s), size)


def pixel_images(x, pre: Preprocessed, name: str = "images", single_ok: bool = False) -> torch.Tensor:
    """``x`` checked as (N, 3, H, W) RGB in [0, 1] (``single_ok``: also (3, H, W)), as
    float32 on the model's device."""
    if single_ok and isinstance(x, torch.Tensor) and x.dim() == 3:
        x = x[None]
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
        shapes = "(N, 3, H, W) or (3, H, W)" if single_ok else "(N, 3, H, W)"
        raise ValueError(f"{name} must be {shapes} in [0, 1], got {getattr(x, 'shape', type(x).__name__)}")
    if not bool(((x >= 0) & (x <= 1)).all()):  # NaN fails both comparisons
        raise ValueError(f"{name} must be in [0, 1] (pixel space; the model's normalisation is applied inside)")
    return x.detach().to(pre.mean.device).float()


def indices_per_image(y, n: int, name: str, device=None) -> torch.Tensor:
    """One index >= 0 per image (a class, a channel), (n,) long, from an int, a sequence or
    a tensor (one value is used for every image); whether each is below the model's class
    or channel count is `check_index_range`'s job, once the model's output is known."""
    t = torch.as_tensor(y, device=device)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be integer indices, got {t.dtype}")
    t = t.long().flatten()
    t = t.expand(n) if t.numel() == 1 else t
    if t.numel() != n:
        raise ValueError(f"{name}: one per image ({n}), got {t.numel()}")
    if bool((t < 0).any()):
        raise ValueError(f"{name} must be >= 0, got {t.tolist()}")
    return t


class LayerTap:
    """Captures one layer's output during a forward pass; with ``stop=True`` the pass ends
    there (the rest of the network is not computed)."""

    def __init__(self, model: nn.Module, layer, stop: bool = True):
        (self.name, self.module), = resolve_layers(model, layer)
        self.model, self.stop = model, stop

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        cap = LayerCapture([(self.name, self.module)], stop=self.stop, arg="layer")
        cap.run(self.model, x)
        (out,) = cap.get()
        return out


@dataclass
class AscentResult:
    """What a gradient-ascent visualisation returns."""

    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    inputs: torch.Tensor  # the same in model space
    objective: torch.Tensor  # (steps, N): the objective at every step
    history: list = field(default_factory=list)  # (step, images in [0, 1] on the CPU) at the chosen steps
