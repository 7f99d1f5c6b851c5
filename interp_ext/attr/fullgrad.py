"""FullGrad (Srinivas & Fleuret): the input-gradient term plus every bias's gradient
term, batched on the device.

``map = psi(|x * dS/dx|) + sum over bias layers l, channels k of psi(|b_lk * dS/dz_lk|)``
where ``z_l`` is the output of a layer with a bias (a convolution with a bias, a BatchNorm
in eval mode: its bias is ``beta - mean * gamma / sqrt(var + eps)``) and ``psi`` scales
each (sample, channel) map to [0, 1] and resizes it (bilinear) to the input. One forward
and ONE ``torch.autograd.grad`` to the input and the bias layers' outputs (no weight
gradients). Because the bilinear resize is linear, each layer's channel maps are summed
at the layer's resolution and resized once per resolution, not once per channel
(pytorch-grad-cam resizes every channel of every layer with OpenCV).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from ..layers import LayerCapture, LayerSpec, resolve_layers
from ._common import Target, check_inputs, in_eval_mode, model_output, normalize_target
from .cam import CAMResult, OutputSize, ScoreFn, _check_flag, _scores, cam_output_size, resize_maps, unit_scale

BiasPredicate = Callable[[nn.Module], bool]


def has_bias(m: nn.Module) -> bool:
    """A ``Conv2d`` (or subclass) with a bias, or a ``BatchNorm2d`` with a bias and running
    statistics (what its eval-mode bias is computed from)."""
    if isinstance(m, nn.BatchNorm2d):
        return m.bias is not None and m.running_mean is not None and m.running_var is not None
    return isinstance(m, nn.Conv2d) and m.bias is not None


def bias_layers(model: nn.Module, predicate: BiasPredicate = has_bias) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs of `model` whose bias FullGrad uses, in registration order."""
    return [(name, m) for name, m in model.named_modules() if name and predicate(m)]


def effective_bias(m: nn.Module) -> torch.Tensor:
    """The bias a layer adds to its output: a convolution's own; for an eval-mode
    BatchNorm, ``beta - running_mean * gamma / sqrt(running_var + eps)``."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        gamma = m.weight if m.weight is not None else torch.ones_like(m.running_var)
        return (m.bias - m.running_mean * gamma / torch.sqrt(m.running_var + m.eps)).detach()
    return m.bias.detach()


def fullgrad_terms(x: torch.Tensor, input_grad: torch.Tensor, layers: Sequence[tuple[str, nn.Module]],
                   grads: Sequence[torch.Tensor], eps: Optional[float] = None
                   ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The input term ``(N, C, H, W)`` (each channel scaled to [0, 1]) and, per bias layer,
    its channel-summed term at the layer's resolution ``(N, 1, h, w)`` (each channel scaled
    to [0, 1] first). ``eps``: the scaling's epsilon (`unit_scale`)."""
    inp = unit_scale((input_grad * x).abs(), (2, 3), eps)
    per_layer = []
    for (_, m), g in zip(layers, grads):
        b = effective_bias(m).to(g.dtype)
        per_layer.append(unit_scale((g * b[None, :, None, None]).abs(), (2, 3), eps).sum(1, keepdim=True))
    return inp, per_layer


def sum_resized(maps: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Sum of (N, 1, h_i, w_i) maps resized to ``size``: summed per resolution first, then
    one resize per resolution (equal by linearity)."""
    by_res: dict[tuple[int, int], torch.Tensor] = {}
    for m in maps:
        key = tuple(m.shape[-2:])
        by_res[key] = by_res[key] + m if key in by_res else m.clone()
    total = None
    for m in by_res.values():
        r = resize_maps(m, size)
        total = r if total is None else total + r
    return total


class FullGrad:
    """FullGrad saliency: ``(N, 1, H, W)`` maps at the input's resolution.

    ``layers``: the bias layers, by default every ``Conv2d`` with a bias and every
    ``BatchNorm2d`` (`has_bias`); a list of modules or names, or a predicate on modules.
    Each must run once per forward."""

    def __init__(self, model: nn.Module, layers: Union[None, BiasPredicate, Sequence[LayerSpec]] = None):
        self.model = model
        if layers is None or callable(layers) and not isinstance(layers, nn.Module):
            self.layers = bias_layers(model, layers or has_bias)
        else:
            self.layers = resolve_layers(model, layers, arg="layers")
            bad = [name for name, m in self.layers if not isinstance(m, (nn.Conv2d, nn.modules.batchnorm._BatchNorm))
                   or m.bias is None]
            if bad:
                raise ValueError(f"layers: {', '.join(bad)} have no bias (a Conv2d with a bias or a BatchNorm2d)")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False  # hooks live only inside attribute()

    @in_eval_mode
    def attribute(self, inputs: torch.Tensor, target: Union[Target, ScoreFn] = None, output_size: OutputSize = "input",
                  normalize: bool = True) -> CAMResult:
        """Maps for a batch of images; ``target`` as `GradCAM.attribute`. ``output_size``:
        ``"input"`` or ``(H, W)`` (the terms are resized there). ``layer_maps``: "input"
        (the input term summed over channels, at the output size) and each bias layer's
        term at its own resolution. The model runs in eval mode (flags restored)."""
        check_inputs(inputs, min_dim=4, model=self.model)
        if inputs.dim() != 4:
            raise ValueError(f"inputs must be images (N, C, H, W), got shape {tuple(inputs.shape)}")
        if output_size is None:
            raise ValueError('output_size must be "input" or (H, W) for FullGrad (its terms live at every resolution)')
        size = cam_output_size(output_size, inputs)
        _check_flag(normalize, "normalize")
        target_t = None if callable(target) else normalize_target(target, inputs.shape[0], inputs.device)
        logits, input_grad, grads = fullgrad_gradients(self.model, self.layers, inputs,
                                                       lambda out: _scores(out, target, target_t))
        x = inputs.detach()
        inp, per_layer = fullgrad_terms(x, input_grad, self.layers, grads)
        inp_map = resize_maps(inp.sum(1, keepdim=True), size)
        total = inp_map + sum_resized(per_layer, size) if per_layer else inp_map
        maps = unit_scale(total) if normalize else total
        layer_maps = {"input": inp_map, **{name: m for (name, _), m in zip(self.layers, per_layer)}}
        return CAMResult(maps, logits, layer_maps)


def fullgrad_gradients(model: nn.Module, layers: Sequence[tuple[str, nn.Module]], inputs: torch.Tensor,
                       score: Callable[[torch.Tensor], torch.Tensor]
                       ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(logits, dS/dx, [dS/dz_l]) from one forward and one backward."""
    x = inputs.detach().requires_grad_(True)
    with LayerCapture(layers, require_map=True, arg="layers") as cap, torch.enable_grad():
        logits = model_output(model(x))
        acts = cap.get()
        s = score(logits)
    grads = torch.autograd.grad(s.sum(), [x, *acts], allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip([x, *acts], grads)]
    return logits.detach(), grads[0], grads[1:]
