"""Layers by module or dotted name, and the one way their outputs are captured during a
forward pass (CAM methods, the planner, feature extraction and visualisation share it)."""
from __future__ import annotations

import difflib
from typing import Optional, Sequence, Union

import torch
from torch import nn

LayerSpec = Union[str, nn.Module]


def resolve_layers(model: nn.Module, layers: Union[LayerSpec, Sequence[LayerSpec]],
                   arg: str = "target_layer") -> list[tuple[str, nn.Module]]:
    """Modules or dotted names -> (name, module) pairs; an unknown name is a ValueError
    naming ``arg`` with the closest layer names."""
    specs = [layers] if isinstance(layers, (str, nn.Module)) else list(layers)
    if not specs:
        raise ValueError(f"{arg}: give at least one layer (a module or its dotted name)")
    named = dict(model.named_modules())
    by_module = {id(m): n for n, m in named.items()}
    out = []
    for spec in specs:
        if isinstance(spec, str):
            if spec not in named:
                close = difflib.get_close_matches(spec, [n for n in named if n], n=5, cutoff=0.5)
                hint = f"; close matches: {', '.join(close)}" if close else ""
                raise ValueError(f"{arg}: the model has no layer named {spec!r}{hint}")
            out.append((spec, named[spec]))
        elif isinstance(spec, nn.Module):
            if id(spec) not in by_module:
                raise ValueError(f"{arg}: {type(spec).__name__} module is not part of the model")
            out.append((by_module[id(spec)] or type(spec).__name__, spec))
        else:
            raise TypeError(f"{arg} must be a module or a dotted name, got {type(spec).__name__}")
    return out


class _Stop(Exception):
    """Raised by a hook to end a forward pass once every captured layer has run."""


class LayerCapture:
    """Forward hooks that keep each layer's output for one forward pass::

        with LayerCapture(layers) as cap:
            logits = model(x)
        acts = cap.get()          # in the order of `layers`

    The rest of the model receives a clone of each kept output, so an in-place op after
    the layer (``ReLU(inplace=True)``) cannot overwrite it.

    ``start_autograd``: run the forward under ``torch.no_grad()``; the first captured
    layer detaches its output, makes it require grad and switches autograd on, so only
    the part of the network after it is recorded (what a gradient to the layer needs)
    and the layers before it keep no saved tensors. The ``no_grad`` block restores the
    mode afterwards.
    ``stop``: end the forward as soon as every layer has run (its outputs are all that
    is wanted); use ``cap.run(model, x)``, which absorbs the early exit.
    ``require_map``: each output must be a ``(N, K, h, w)`` feature map.
    ``detach``: keep detached outputs (feature extraction).
    """

    def __init__(self, layers: Sequence[tuple[str, nn.Module]], *, start_autograd: bool = False, stop: bool = False,
                 require_map: bool = False, detach: bool = False, arg: str = "target_layer"):
        self.layers = list(layers)
        self.start_autograd, self.stop, self.require_map, self.detach, self.arg = (
            start_autograd, stop, require_map, detach, arg)
        self.outputs: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self._handles: list = []

    def __enter__(self) -> "LayerCapture":
        self.outputs.clear()
        self.calls.clear()
        for name, module in self.layers:
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> bool:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return exc[0] is _Stop  # the early end of a `stop` capture is not an error

    def _hook(self, name: str):
        def hook(module, args, output):
            if not isinstance(output, torch.Tensor) or (self.require_map and output.dim() != 4):
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                what = "a (N, K, h, w) feature map" if self.require_map else "a tensor"
                raise ValueError(f"{self.arg} {name!r} must output {what}, got {shape}")
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.start_autograd and not torch.is_grad_enabled():  # the first layer: record from here on
                output = output.detach().requires_grad_(True)
                torch.set_grad_enabled(True)
            self.outputs[name] = output.detach() if self.detach else output
            if self.stop and len(self.outputs) == len(self.layers):
                raise _Stop
            return output.clone()

        return hook

    def run(self, model: nn.Module, *args) -> Optional[torch.Tensor]:
        """``model(*args)`` inside the capture; None when a ``stop`` capture ended it early."""
        with self:
            return model(*args)
        return None  # reached only when the forward was stopped

    def get(self) -> list[torch.Tensor]:
        """The captured outputs in the order of the layers; each must have run exactly once."""
        for name, _ in self.layers:
            if name not in self.outputs:
                raise RuntimeError(f"{self.arg} {name!r} did not run during the forward pass")
            if self.calls[name] > 1:
                raise RuntimeError(f"{self.arg} {name!r} ran {self.calls[name]} times in one forward; pick a layer used once")
        return [self.outputs[name] for name, _ in self.layers]
