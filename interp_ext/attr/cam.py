"""The CAM family on the device: Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM,
CAM and Guided Grad-CAM, batched, through the native ``gradcam`` / ``cam`` ops."""
from __future__ import annotations

import difflib
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ._common import Target, check_inputs, in_eval_mode, model_output, normalize_target, resolve_target
from .gradient import GuidedBackprop

LayerSpec = Union[str, nn.Module]
OutputSize = Union[str, None, Sequence[int]]
ScoreFn = Callable[[torch.Tensor], torch.Tensor]


class CAMResult(NamedTuple):
    """``maps`` (N, 1, H, W): the map (the mean of the per-layer normalised maps when
    several layers are given); ``logits``: the model output, so the caller need not run
    the model again; ``layer_maps``: one map per target layer, by name."""

    maps: torch.Tensor
    logits: torch.Tensor
    layer_maps: dict[str, torch.Tensor]


def resolve_layers(model: nn.Module, layers: Union[LayerSpec, Sequence[LayerSpec]]) -> list[tuple[str, nn.Module]]:
    """Modules or dotted names -> (name, module) pairs; unknown names are a clear error."""
    specs = [layers] if isinstance(layers, (str, nn.Module)) else list(layers)
    if not specs:
        raise ValueError("target_layer: give at least one layer (a module or its dotted name)")
    named = dict(model.named_modules())
    by_module = {id(m): n for n, m in named.items()}
    out = []
    for spec in specs:
        if isinstance(spec, str):
            if spec not in named:
                close = difflib.get_close_matches(spec, [n for n in named if n], n=5, cutoff=0.5)
                hint = f"; close matches: {', '.join(close)}" if close else ""
                raise ValueError(f"target_layer: the model has no layer named {spec!r}{hint}")
            out.append((spec, named[spec]))
        elif isinstance(spec, nn.Module):
            if id(spec) not in by_module:
                raise ValueError(f"target_layer: {type(spec).__name__} module is not part of the model")
            out.append((by_module[id(spec)] or type(spec).__name__, spec))
        else:
            raise TypeError(f"target_layer must be a module or a dotted name, got {type(spec).__name__}")
    return out


class _Capture:
    """Forward hooks that keep each target layer's output for one call.

    The hook hands the rest of the model a clone, so an in-place op after the layer
    (ReLU(inplace=True)) cannot overwrite the activation we keep. Run the forward under
    ``torch.no_grad()``: the first target layer to run switches autograd on, so only
    the part of the network after it is recorded (what the gradient needs), and the
    layers before it keep no saved tensors. The ``no_grad`` block restores the mode."""

    def __init__(self, layers: list[tuple[str, nn.Module]], start_autograd: bool = True):
        self.layers = layers
        self.start_autograd = start_autograd
        self.outputs: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self.handles = []

    def __enter__(self):
        for name, module in self.layers:
            self.handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()
        return False

    def _hook(self, name: str):
        def hook(module, args, output):
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise ValueError(f"target_layer {name!r} must output a (N, K, h, w) feature map, got {shape}")
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.start_autograd and not torch.is_grad_enabled():  # the first target layer: record from here on
                output = output.detach().requires_grad_(True)
                torch.set_grad_enabled(True)
            self.outputs[name] = output
            return output.clone()

        return hook

    def get(self) -> list[torch.Tensor]:
        for name, _ in self.layers:
            if name not in self.outputs:
                raise RuntimeError(f"target_layer {name!r} did not run during the forward pass")
            if self.calls[name] > 1:
                raise RuntimeError(f"target_layer {name!r} ran {self.calls[name]} times in one forward; pick a layer used once")
        return [self.outputs[name] for name, _ in self.layers]


def _scores(logits: torch.Tensor, target, target_t: Optional[torch.Tensor]) -> torch.Tensor:
    """One scalar per sample: the target class's logit, or a user function of the output."""
    if callable(target):
        s = target(logits)
        if not isinstance(s, torch.Tensor) or s.shape != (logits.shape[0],):
            got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise ValueError(f"target function must return one score per sample, shape ({logits.shape[0]},), got {got}")
        return s
    idx = resolve_target(target_t, logits)
    return logits.gather(1, idx[:, None])[:, 0]


def _size(output_size: OutputSize, inputs: torch.Tensor) -> Optional[tuple[int, int]]:
    if output_size == "input":
        return (inputs.shape[-2], inputs.shape[-1])
    if output_size is None:
        return None
    if isinstance(output_size, str) or len(output_size) != 2 or any(int(s) <= 0 for s in output_size):
        raise ValueError(f'output_size must be "input", None or (H, W) with positive ints, got {output_size!r}')
    return (int(output_size[0]), int(output_size[1]))


def _fuse(layer_maps: list[torch.Tensor], size: Optional[tuple[int, int]]) -> torch.Tensor:
    """Mean of the per-layer maps, each brought to a common size (the largest layer's
    when `size` is None) and to [0, 1] first (a no-op for already normalised maps)."""
    if len(layer_maps) == 1:
        return layer_maps[0]
    if size is None:
        size = max((m.shape[-2], m.shape[-1]) for m in layer_maps)
    common = []
    for m in layer_maps:
        if tuple(m.shape[-2:]) != size:
            m = F.interpolate(m.float(), size=size, mode="bilinear", align_corners=False).to(m.dtype)
        lo = m.amin((2, 3), keepdim=True)
        span = m.amax((2, 3), keepdim=True) - lo
        common.append(torch.where(span > 0, (m - lo) / span.clamp_min(1e-30), torch.zeros_like(m)))
    return torch.stack(common).mean(0)


class _GradCAMBase:
    variant = "gradcam"

    def __init__(self, model: nn.Module, target_layer: Union[LayerSpec, Sequence[LayerSpec]]):
        self.model = model
        self.layers = resolve_layers(model, target_layer)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False  # hooks live only inside attribute(); nothing to release

    @in_eval_mode
    def attribute(
        self,
        inputs: torch.Tensor,
        target: Union[Target, ScoreFn] = None,
        output_size: OutputSize = "input",
        normalize: bool = True,
    ) -> CAMResult:
        """Maps for a whole batch from one forward and one backward (to the target layers
        only: no weight gradients).

        ``target``: None (each sample's top-1 class), an int, one class per sample, or a
        function of the model output returning one score per sample. ``output_size``:
        ``"input"`` (the input's H, W), ``None`` (the layer's resolution, the numbers
        Captum's ``LayerGradCam`` gives with ``normalize=False``) or ``(H, W)``.

        ``inputs``: a finite batch in the model's dtype. The model runs in eval mode (a
        model in train mode gets every module's flag back afterwards, also on an error);
        it must return one tensor of scores (a tuple or dict is a ``TypeError``).
        """
        check_inputs(inputs, model=self.model)
        size = _size(output_size, inputs)
        target_t = None if callable(target) else normalize_target(target, inputs.shape[0], inputs.device)
        with _Capture(self.layers) as cap, torch.no_grad():  # the hooks turn autograd on
            logits = model_output(self.model(inputs))
            acts = cap.get()
        with torch.enable_grad():  # the score is part of the graph, also inside a caller's no_grad
            score = _scores(logits, target, target_t)
            grads = torch.autograd.grad(score.sum(), acts)
        maps = [
            ops.gradcam(a.detach(), g, variant=self.variant, output_size=size, normalize=normalize)
            for a, g in zip(acts, grads)
        ]
        fused = _fuse(maps, size)
        return CAMResult(fused, logits.detach(), {name: m for (name, _), m in zip(self.layers, maps)})


class GradCAM(_GradCAMBase):
    """Grad-CAM (Selvaraju et al.): channel weights = spatial mean of the gradients."""

    variant = "gradcam"


class GradCAMPlusPlus(_GradCAMBase):
    """Grad-CAM++ (Chattopadhyay et al.): alpha-weighted positive gradients."""

    variant = "gradcam++"


class XGradCAM(_GradCAMBase):
    """XGrad-CAM (Fu et al.): activation-normalised gradient weights."""

    variant = "xgradcam"


class LayerCAM(_GradCAMBase):
    """LayerCAM (Jiang et al.): element-wise positive gradient x activation."""

    variant = "layercam"


class HiResCAM(_GradCAMBase):
    """HiResCAM (Draelos & Carin): element-wise gradient x activation, no pooling."""

    variant = "hirescam"


class CAM:
    """Class activation mapping (Zhou et al.) for a GAP + linear head: the last conv
    features weighted by the classifier's weights. One forward, no backward."""

    def __init__(self, model: nn.Module, target_layer: LayerSpec, fc_layer: LayerSpec):
        self.model = model
        self.layers = resolve_layers(model, target_layer)
        if len(self.layers) != 1:
            raise ValueError("target_layer: CAM takes exactly one layer")
        (_, fc), = resolve_layers(model, fc_layer)
        if not isinstance(fc, nn.Linear):
            raise TypeError(f"fc_layer must be an nn.Linear classifier, got {type(fc).__name__}")
        self.fc = fc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @in_eval_mode
    def attribute(self, inputs: torch.Tensor, target: Target = None, output_size: OutputSize = "input",
                  normalize: bool = True) -> CAMResult:
        """Maps for a batch from one forward pass; arguments as `GradCAM.attribute` (no
        score functions). The model runs in eval mode, its flags restored afterwards."""
        check_inputs(inputs, model=self.model)
        size = _size(output_size, inputs)
        target_t = normalize_target(target, inputs.shape[0], inputs.device)
        with _Capture(self.layers, start_autograd=False) as cap, torch.no_grad():
            logits = model_output(self.model(inputs))
            (features,) = cap.get()
        if features.shape[1] != self.fc.in_features:
            raise ValueError(
                f"fc_layer takes {self.fc.in_features} features but target_layer gives {features.shape[1]} channels"
            )
        idx = resolve_target(target_t, logits)
        maps = ops.cam(features, self.fc.weight.detach(), idx, output_size=size, normalize=normalize)
        return CAMResult(maps, logits, {self.layers[0][0]: maps})


class GuidedGradCAM:
    """Guided Grad-CAM: guided backprop times the Grad-CAM map resized to the input
    (normalised to [0, 1], bilinear). Input-shaped, like guided backprop."""

    def __init__(self, model: nn.Module, target_layer: LayerSpec):
        self.model = model
        self.gradcam = GradCAM(model, target_layer)
        self.guided = GuidedBackprop(model)

    @in_eval_mode
    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        """Input-shaped maps for a batch of images; the model runs in eval mode (its flags
        restored afterwards)."""
        check_inputs(inputs, min_dim=4, model=self.model)
        if inputs.dim() != 4:
            raise ValueError(f"inputs must be images (N, C, H, W), got shape {tuple(inputs.shape)}")
        cams = self.gradcam.attribute(inputs, target=target, output_size="input")
        # the same classes for both halves, also when target is None (top-1)
        target_idx = cams.logits.argmax(1) if target is None else target
        return self.guided.attribute(inputs, target=target_idx) * cams.maps
