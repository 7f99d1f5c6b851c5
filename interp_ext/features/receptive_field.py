"""Receptive fields from the model's own convolution, pooling and padding geometry (traced
through one forward pass, so residual branches and functional calls count), and the
maximally activating image patches of a layer's channels over a dataset, streamed."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from tqdm.auto import tqdm

from ..attr._common import in_eval_mode
from ..layers import LayerCapture, resolve_layers

_CONV = {"conv2d"}
_POOL = {"max_pool2d", "_max_pool2d", "max_pool2d_with_indices", "avg_pool2d"}
_PAD = {"pad", "_pad"}


@dataclass(frozen=True)
class Axis:
    """Output index i along one axis sees input pixels [start + i * jump, start + i * jump + size)."""

    jump: int
    size: int
    start: int


@dataclass(frozen=True)
class ReceptiveField:
    """The receptive field of a layer's outputs: per axis (rows, columns) its geometry, and
    the input size it was traced at."""

    rows: Axis
    cols: Axis
    input_size: tuple[int, int]

    def box(self, y: int, x: int, clip: bool = True) -> tuple[int, int, int, int]:
        """Input pixels (y0, y1, x0, x1), end exclusive, seen by output position (y, x);
        clipped to the image (padding is not image)."""
        y0, x0 = self.rows.start + y * self.rows.jump, self.cols.start + x * self.cols.jump
        y1, x1 = y0 + self.rows.size, x0 + self.cols.size
        if clip:
            h, w = self.input_size
            y0, x0, y1, x1 = max(0, y0), max(0, x0), min(h, y1), min(w, x1)
        return y0, y1, x0, x1


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def _arg(args, kwargs, i: int, name: str, default):
    return args[i] if len(args) > i else kwargs.get(name, default)


def _conv_params(name, args, kwargs):
    """F.conv2d(input, weight, bias, stride, padding, dilation, groups)."""
    k = tuple(args[1].shape[2:])
    stride, dilation = _pair(_arg(args, kwargs, 3, "stride", 1)), _pair(_arg(args, kwargs, 5, "dilation", 1))
    padding = _arg(args, kwargs, 4, "padding", 0)
    if isinstance(padding, str):  # "valid", or "same" (the left side gets the smaller half)
        padding = (0, 0) if padding == "valid" else tuple(dilation[a] * (k[a] - 1) // 2 for a in range(2))
    return k, stride, _pair(padding), dilation


def _pool_params(name, args, kwargs):
    """F.max_pool2d / F.avg_pool2d(input, kernel_size, stride=None, padding=0[, dilation=1])."""
    k = _pair(_arg(args, kwargs, 1, "kernel_size", None))
    stride = _arg(args, kwargs, 2, "stride", None)
    stride = _pair(stride) if stride not in (None, [], ()) else k
    dilation = _pair(_arg(args, kwargs, 4, "dilation", 1)) if "max" in name else (1, 1)
    return k, stride, _pair(_arg(args, kwargs, 3, "padding", 0)), dilation


class _GeometryMode(TorchFunctionMode):
    """Propagates (rows, cols) geometry from tensor to tensor during one forward pass."""

    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.geometry: dict[int, tuple[Axis, Axis]] = {id(x): (Axis(1, 1, 0), Axis(1, 1, 0))}
        self.alive: list[torch.Tensor] = [x]  # keep ids unique for the duration of the pass

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor) and id(a) in self.geometry]
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if not tensors:
            return out
        src = tensors[0]
        g = self.geometry[id(src)]
        if name in _CONV or name in _POOL:
            k, stride, padding, dilation = (_conv_params if name in _CONV else _pool_params)(name, args, kwargs)
            new = tuple(Axis(a.jump * stride[i], a.size + (dilation[i] * (k[i] - 1)) * a.jump, a.start - padding[i] * a.jump)
                        for i, a in enumerate(g))
            self._set(outs[0], new)
        elif name in _PAD:
            pad = list(_arg(args, kwargs, 1, "pad", ()))
            left, top = (pad + [0, 0, 0, 0])[0], (pad + [0, 0, 0, 0])[2]
            self._set(outs[0], (Axis(g[0].jump, g[0].size, g[0].start - top * g[0].jump),
                                Axis(g[1].jump, g[1].size, g[1].start - left * g[1].jump)))
        else:
            for o in outs:
                if isinstance(o, torch.Tensor) and o.dim() == 4:
                    same_size = [t for t in tensors if t.dim() == 4 and t.shape[2:] == o.shape[2:]]
                    if len(same_size) == len(tensors):  # element-wise, concatenation, normalisation...
                        self._set(o, tuple(self._union([self.geometry[id(t)][a] for t in tensors]) for a in range(2)))
        return out

    def _set(self, t, geometry) -> None:
        if isinstance(t, torch.Tensor):
            self.geometry[id(t)] = geometry
            self.alive.append(t)

    @staticmethod
    def _union(axes: list[Axis]) -> Axis:
        jumps = {a.jump for a in axes}
        if len(jumps) != 1:
            raise ValueError(f"receptive field: branches with different strides meet ({sorted(jumps)})")
        start = min(a.start for a in axes)
        end = max(a.start + a.size for a in axes)
        return Axis(axes[0].jump, end - start, start)


@in_eval_mode
def receptive_field(model: nn.Module, layer: Union[str, nn.Module], input_size: Union[int, tuple[int, int]] = 224,
                    channels: int = 3) -> ReceptiveField:
    """The receptive field of ``layer``'s outputs, traced through one forward pass of a
    zero image of ``input_size``: every convolution, pooling and padding on the way
    (functional calls and residual branches included) updates jump, size and start.
    Layers after a resize that is not a convolution or pooling (interpolation, adaptive
    pooling) have no fixed receptive field and raise."""
    (name, module), = resolve_layers(model, layer)
    h, w = _pair(input_size)
    if h < 1 or w < 1 or channels < 1:
        raise ValueError(f"input_size and channels must be positive, got {input_size!r}, {channels!r}")
    p = next(model.parameters(), None)
    x = torch.zeros(1, channels, h, w, device=p.device if p is not None else "cpu", dtype=p.dtype if p is not None else None)
    cap = LayerCapture([(name, module)], stop=True, arg="layer")  # nothing after the layer needs to run
    mode = _GeometryMode(x)
    with torch.no_grad(), mode:
        cap.run(model, x)
    (output,) = cap.get()
    geometry = mode.geometry.get(id(output))
    if geometry is None:
        raise ValueError(f"layer {name!r} has no fixed receptive field (its output is not a spatial map derived by "
                         "convolution, pooling and padding only)")
    return ReceptiveField(geometry[0], geometry[1], (h, w))


@dataclass
class TopPatches:
    """For each requested channel, the k largest activations over the dataset."""

    channels: list[int]
    values: torch.Tensor  # (channels, k), largest first
    image_indices: torch.Tensor  # (channels, k) dataset indices
    positions: torch.Tensor  # (channels, k, 2) (y, x) in the layer's map
    boxes: torch.Tensor  # (channels, k, 4) (y0, y1, x0, x1) in input pixels, clipped
    patches: list[list[torch.Tensor]]  # per channel, the k input crops (3, h, w)

    def grid(self, size: int = 64, padding: int = 2):
        """One row per channel, its patches left to right (largest first), each resized to
        `size` x `size`."""
        from PIL import Image

        rows, k = len(self.patches), max((len(p) for p in self.patches), default=0)
        canvas = Image.new("RGB", (k * (size + padding) + padding, rows * (size + padding) + padding), "white")
        for r, row in enumerate(self.patches):
            for c, patch in enumerate(row):
                arr = (patch.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
                tile = Image.fromarray(arr).resize((size, size), Image.NEAREST)
                canvas.paste(tile, (padding + c * (size + padding), padding + r * (size + padding)))
        return canvas


@in_eval_mode
def top_activating_patches(model: nn.Module, layer: Union[str, nn.Module], channels: Union[int, Sequence[int]], dataset,
                           k: int = 9, *, batch_size: int = 32, device=None, normalize=None,
                           show_progress: bool = False) -> TopPatches:
    """Stream ``dataset`` (items: (3, H, W) images in [0, 1], or tuples starting with one)
    through the model in batches, keeping for each channel the k largest activations of
    ``layer`` seen so far (no activations are stored), then crop each one's receptive
    field from its image. ``normalize``: a function applied to images before the model
    (e.g. ``LoadedModel.normalize``)."""
    from .activations import _first_tensor, capture

    chans = [channels] if isinstance(channels, int) else list(channels)
    if k < 1 or not chans:
        raise ValueError("k must be >= 1 and at least one channel given")
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in chans):
        raise ValueError(f"channels must be ints >= 0, got {chans}")
    if len(dataset) == 0:
        raise ValueError("dataset is empty")
    (name, _), = resolve_layers(model, layer)
    p = next(model.parameters(), None)
    dev = torch.device(device) if device is not None else (p.device if p is not None else torch.device("cpu"))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         collate_fn=lambda items: torch.stack([_first_tensor(i) for i in items]))
    best_v = best_i = None
    rf, seen = None, 0
    for batch in tqdm(loader, desc=f"top patches of {name}", unit="batch", disable=not show_progress):
        x = batch.to(dev)
        if rf is None:
            rf = receptive_field(model, name, tuple(x.shape[2:]), x.shape[1])
        act = capture(model, name, normalize(x) if normalize else x)[name]
        if act.dim() != 4 or max(chans) >= act.shape[1]:
            raise ValueError(f"layer {name!r}: channels must index its (N, C, h, w) output, got {tuple(act.shape)}")
        a = act[:, chans].permute(1, 0, 2, 3).flatten(1).float()  # (channels, n * h * w)
        hw = act.shape[2] * act.shape[3]
        flat_idx = torch.arange(seen * hw, (seen + len(x)) * hw, device=a.device).expand(len(chans), -1)
        cand_v = a if best_v is None else torch.cat([best_v, a], 1)
        cand_i = flat_idx if best_i is None else torch.cat([best_i, flat_idx], 1)
        top = cand_v.topk(min(k, cand_v.shape[1]), dim=1)
        best_v, best_i = top.values, cand_i.gather(1, top.indices)
        seen += len(x)
        map_w = act.shape[3]
    image_idx = best_i // hw
    pos = best_i % hw
    positions = torch.stack([pos // map_w, pos % map_w], dim=-1)
    boxes = torch.tensor([[rf.box(int(y), int(xx)) for y, xx in row.tolist()] for row in positions])
    patches = [[_first_tensor(dataset[int(i)])[:, b[0] : b[1], b[2] : b[3]] for i, b in zip(ii.tolist(), bb.tolist())]
               for ii, bb in zip(image_idx, boxes)]
    return TopPatches(chans, best_v.cpu(), image_idx.cpu(), positions.cpu(), boxes, patches)
