"""Layer activations of a batch or of a whole dataset (batched, bounded memory, optionally
into a .npy memmap), and the picture grids of filters and activations."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from ..attr._common import in_eval_mode
from ..layers import LayerCapture, resolve_layers

LayerSpec = Union[str, nn.Module]


@in_eval_mode
def capture(model: nn.Module, layers: Union[LayerSpec, Sequence[LayerSpec]], inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """The named layers' outputs for one forward pass of ``inputs`` (no autograd), as
    ``{name: tensor}``. Hooks exist only during the call; the model runs in eval mode (its
    flags restored afterwards)."""
    named = resolve_layers(model, layers)
    # stop: the layers after the last captured one need not run
    cap = LayerCapture(named, stop=True, detach=True, arg="layers")
    with torch.no_grad():
        cap.run(model, inputs)
    return dict(zip((name for name, _ in named), cap.get()))


def _first_tensor(item: Any) -> torch.Tensor:
    return item[0] if isinstance(item, (tuple, list)) else item


@in_eval_mode
def extract_features(
    model: nn.Module,
    layer: LayerSpec,
    dataset,
    batch_size: int = 64,
    device: Union[str, torch.device, None] = None,
    *,
    out: Union[str, Path, None] = None,
    show_progress: bool = False,
) -> Union[torch.Tensor, np.memmap]:
    """A layer's outputs for every item of ``dataset`` (a map-style dataset or sequence of
    tensors, or of tuples whose first element is the input), in batches on ``device``.
    Returns an ``(N, ...)`` CPU tensor, or with ``out=`` a float32 ``.npy`` file written
    batch by batch (opened as a memmap), so memory stays bounded by the batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    (name, _), = resolve_layers(model, layer)
    n = len(dataset)
    if n == 0:
        raise ValueError("dataset is empty")
    p = next(model.parameters(), None)
    dev = torch.device(device) if device is not None else (p.device if p is not None else torch.device("cpu"))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         collate_fn=lambda items: torch.stack([_first_tensor(i) for i in items]))
    result, written, tmp = None, 0, None
    try:
        for batch in tqdm(loader, desc=f"features of {name}", unit="batch", disable=not show_progress):
            feats = capture(model, name, batch.to(dev))[name].float().cpu()
            if result is None:
                shape = (n, *feats.shape[1:])
                if out is None:
                    result = torch.empty(shape, dtype=torch.float32)
                else:
                    path = Path(out)
                    tmp = path.with_name(f".{path.name}.tmp")
                    result = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
            result[written : written + len(feats)] = feats if out is None else feats.numpy()
            written += len(feats)
    except BaseException:
        if tmp is not None and tmp.exists():
            tmp.unlink()
        raise
    if out is None:
        return result
    result.flush()
    del result
    os.replace(tmp, out)
    return np.load(out, mmap_mode="r")


def _tile_grid(tiles: list[np.ndarray], columns: Optional[int], padding: int, scale: int) -> Image.Image:
    """uint8 tiles (h, w) or (h, w, 3), same size -> one image on a white background."""
    count = len(tiles)
    cols = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    h, w = tiles[0].shape[:2]
    h, w = h * scale, w * scale
    rgb = tiles[0].ndim == 3
    canvas = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, *((3,) if rgb else ())), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        big = np.kron(t, np.ones((scale, scale, 1) if rgb else (scale, scale), dtype=np.uint8))
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        canvas[y : y + h, x : x + w] = big
    return Image.fromarray(canvas)


def _to_uint8(a: torch.Tensor) -> np.ndarray:
    """Min-max of each tile on its own (a constant tile becomes mid-grey)."""
    a = a.detach().float().cpu()
    lo, hi = a.min(), a.max()
    a = (a - lo) / (hi - lo) if hi > lo else torch.full_like(a, 0.5)
    return (a * 255).round().byte().numpy()


def filter_grid(model_or_layer: nn.Module, layer: Optional[LayerSpec] = None, *, columns: Optional[int] = None,
                max_filters: int = 64, max_channels: int = 16, padding: int = 1, scale: int = 4) -> Image.Image:
    """A convolution's weights as a picture, each filter normalised on its own. A layer
    with 3 input channels (the first layer, e.g. 64x3x7x7 or 64x3x11x11): one RGB tile per
    filter. Deeper layers: one grayscale tile per (filter, input channel) pair, a row per
    filter (up to ``max_filters`` x ``max_channels``)."""
    conv = model_or_layer if layer is None else resolve_layers(model_or_layer, layer)[0][1]
    if layer is None and not isinstance(conv, nn.Conv2d):
        conv = next((m for m in model_or_layer.modules() if isinstance(m, nn.Conv2d)), None)
    if not isinstance(conv, nn.Conv2d):
        raise ValueError("filter_grid: needs a Conv2d layer (or a model whose first Conv2d is used)")
    w = conv.weight.detach()[:max_filters]
    if w.shape[1] == 3:
        return _tile_grid([_to_uint8(f).transpose(1, 2, 0) for f in w], columns, padding, scale)
    w = w[:, :max_channels]
    tiles = [_to_uint8(f[c]) for f in w for c in range(w.shape[1])]
    return _tile_grid(tiles, w.shape[1], padding, scale)


def activation_grid(activations: torch.Tensor, *, columns: Optional[int] = None, padding: int = 1,
                    scale: int = 2) -> Image.Image:
    """A ``(K, h, w)`` feature map (one sample's layer output) as K grayscale tiles, each
    normalised on its own."""
    if activations.dim() != 3:
        raise ValueError(f"activations must be one sample's (K, h, w) map, got {tuple(activations.shape)}")
    return _tile_grid([_to_uint8(a) for a in activations], columns, padding, scale)
