"""The CAM family on the device: Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM,
CAM and Guided Grad-CAM, batched, through the native ``gradcam`` / ``cam`` ops."""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..layers import LayerCapture, LayerSpec, resolve_layers
from ._common import Target, check_inputs, in_eval_mode, model_output, normalize_target, resolve_target
from .gradient import GuidedBackprop

OutputSize = Union[str, None, Sequence[int]]
ScoreFn = Callable[[torch.Tensor], torch.Tensor]


class CAMResult(NamedTuple):
    """``maps`` (N, 1, H, W): the map (the mean of the per-layer normalised maps when
    several layers are given); ``logits``: the model output, so the caller need not run
    the model again; ``layer_maps``: one map per target layer, by name."""

    maps: torch.Tensor
    logits: torch.Tensor
    layer_maps: dict[str, torch.Tensor]


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


def _check_flag(value, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def cam_output_size(output_size: OutputSize, inputs: torch.Tensor) -> Optional[tuple[int, int]]:
    """The ``(H, W)`` a CAM map is resized to: the last two sizes of ``inputs`` for
    ``"input"``, ``None`` (keep the layer's resolution) for ``None``, or ``(H, W)`` as ints.
    Anything else, or a size that is not positive, is a ``ValueError``."""
    if output_size == "input":
        return (inputs.shape[-2], inputs.shape[-1])
    if output_size is None:
        return None
    if isinstance(output_size, str) or len(output_size) != 2 or any(int(s) <= 0 for s in output_size):
        raise ValueError(f'output_size must be "input", None or (H, W) with positive ints, got {output_size!r}')
    return (int(output_size[0]), int(output_size[1]))


def unit_scale(m: torch.Tensor, dims: Sequence[int] = (2, 3), eps: Optional[float] = None) -> torch.Tensor:
    """Each map (over `dims`) min-max scaled to [0, 1]. ``eps=None``: exactly, a constant
    map gives zeros; a number: ``(m - min) / (max - min + eps)`` (pytorch-grad-cam's
    scaling: 1e-7 for its CAMs, 1e-8 for ScoreCAM's masks; a constant map gives zeros)."""
    dims = tuple(dims)
    lo = m.amin(dims, keepdim=True)
    span = m.amax(dims, keepdim=True) - lo
    if eps is not None:
        return (m - lo) / (span + eps)
    return torch.where(span > 0, (m - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(m))


def resize_maps(m: torch.Tensor, size: Optional[tuple[int, int]]) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, H, W) bilinear, ``align_corners=False`` (the native CAM
    reduction's resize and, to float rounding, OpenCV's ``INTER_LINEAR``); ``size`` None or
    the map's own size: unchanged. Computed in float32 at least."""
    if size is None or tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.interpolate(m.float() if m.dtype in (torch.float16, torch.bfloat16) else m, size=tuple(size),
                         mode="bilinear", align_corners=False).to(m.dtype)


def finish_map(m: torch.Tensor, relu: bool, size: Optional[tuple[int, int]], normalize: bool) -> torch.Tensor:
    """A raw (N, 1, h, w) map finished as the native CAM ops finish theirs: ReLU
    (``relu``), bilinear resize to ``size``, per-sample min-max to [0, 1] (``normalize``)."""
    if relu:
        m = m.clamp(min=0)
    m = resize_maps(m, size)
    return unit_scale(m) if normalize else m


def fuse_layer_maps(layer_maps: list[torch.Tensor], size: Optional[tuple[int, int]],
                    normalize: bool = True) -> torch.Tensor:
    """Mean of the per-layer maps, each brought to a common size (the largest layer's
    when `size` is None) and to [0, 1] first (a no-op for already normalised maps); with
    ``normalize`` the mean is scaled to [0, 1] again, as pytorch-grad-cam does (the mean of
    maps whose peaks differ in place would otherwise not reach 1)."""
    if len(layer_maps) == 1:
        return layer_maps[0]
    if size is None:
        size = max((m.shape[-2], m.shape[-1]) for m in layer_maps)
    fused = torch.stack([unit_scale(resize_maps(m, size)) for m in layer_maps]).mean(0)
    return unit_scale(fused) if normalize else fused


def gradcam_maps(acts: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], variant: str,
                 size: Optional[tuple[int, int]], normalize: bool = True,
                 relu: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The fused map and the per-layer maps (N, 1, H, W) of one CAM variant from each
    layer's activations and the target score's gradients (the native reduction)."""
    maps = [ops.gradcam(a.detach(), g, variant=variant, relu=relu, output_size=size, normalize=normalize)
            for a, g in zip(acts, grads)]
    return fuse_layer_maps(maps, size, normalize), maps


def layer_gradients(model: nn.Module, layers: Sequence[tuple[str, nn.Module]], inputs: torch.Tensor,
                    score: Callable[[torch.Tensor], torch.Tensor], *, require_map: bool = True,
                    arg: str = "target_layer") -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """(logits, activations, gradients) for a batch: one forward that records autograd
    only after the first of `layers` (`LayerCapture`), and one ``torch.autograd.grad`` of
    ``score(logits).sum()`` to the layers' outputs (no weight gradients, nothing before the
    first layer). ``score`` gives one score per sample, ``(N,)``."""
    with LayerCapture(layers, start_autograd=True, require_map=require_map, arg=arg) as cap, torch.no_grad():
        logits = model_output(model(inputs))  # the hooks turn autograd on
        acts = cap.get()
    with torch.enable_grad():  # the score is part of the graph, also inside a caller's no_grad
        s = score(logits)
        if not s.requires_grad:
            raise ValueError(f"the target scores do not depend on the {arg} output(s): pick a layer the model's "
                             "output is computed from")
        grads = torch.autograd.grad(s.sum(), acts)
    return logits.detach(), [a.detach() for a in acts], list(grads)


class LayerMethod:
    """A method of one model and its target layers (a module or a dotted name, or several).
    A context manager, for code written for pytorch-grad-cam; its hooks live only inside
    ``attribute``, so there is nothing to release."""

    def __init__(self, model: nn.Module, target_layer: Union[LayerSpec, Sequence[LayerSpec]]):
        self.model = model
        self.layers = resolve_layers(model, target_layer)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def _layer_gradients(self, inputs: torch.Tensor, target, output_size: "OutputSize", normalize: bool, relu: bool):
        """The checks of a gradient CAM's arguments, then one forward and one backward to
        the target layers: (the maps' size, logits, activations, gradients)."""
        check_inputs(inputs, model=self.model)
        size = cam_output_size(output_size, inputs)
        _check_flag(relu, "relu")
        _check_flag(normalize, "normalize")
        target_t = None if callable(target) else normalize_target(target, inputs.shape[0], inputs.device)
        logits, acts, grads = layer_gradients(self.model, self.layers, inputs, lambda out: _scores(out, target, target_t))
        return size, logits, acts, grads


class _GradCAMBase(LayerMethod):
    variant = "gradcam"

    @in_eval_mode
    def attribute(
        self,
        inputs: torch.Tensor,
        target: Union[Target, ScoreFn] = None,
        output_size: OutputSize = "input",
        normalize: bool = True,
        relu: bool = True,
    ) -> CAMResult:
        """Maps for a whole batch from one forward and one backward (to the target layers
        only: no weight gradients).

        ``target``: None (each sample's top-1 class), an int, one class per sample, or a
        function of the model output returning one score per sample. ``output_size``:
        ``"input"`` (the input's H, W), ``None`` (the layer's resolution, the numbers
        Captum's ``LayerGradCam`` gives with ``normalize=False``) or ``(H, W)``.
        ``relu=False``: the signed map (Captum's ``relu_attributions=False``); with
        ``normalize`` it is min-max scaled, so 0 is its minimum, not the sign change.
        Several layers: the mean of their [0, 1] maps, scaled to [0, 1] again when
        ``normalize`` (``layer_maps`` keeps each layer's own map).

        ``inputs``: a finite batch in the model's dtype. The model runs in eval mode (a
        model in train mode gets every module's flag back afterwards, also on an error);
        it must return one tensor of scores (a tuple or dict is a ``TypeError``).
        """
        size, logits, acts, grads = self._layer_gradients(inputs, target, output_size, normalize, relu)
        fused, maps = gradcam_maps(acts, grads, self.variant, size, normalize, relu)
        return CAMResult(fused, logits, {name: m for (name, _), m in zip(self.layers, maps)})


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
        """Maps for a batch from one forward pass (no backward); arguments as
        `GradCAM.attribute`, without score functions and ``relu``.

        ``inputs`` (N, C, H, W): a finite batch in the model's dtype. ``target``: None
        (each sample's top-1 class), an int, or one class per sample. Returns a
        `CAMResult`: ``maps`` (N, 1, H', W') with (H', W') from ``output_size``, in [0, 1]
        when ``normalize``; ``logits`` (N, num_classes); ``layer_maps`` with the one target
        layer's map. A ``ValueError`` when the classifier's ``in_features`` differ from the
        layer's channels. The model runs in eval mode, its flags restored afterwards."""
        check_inputs(inputs, model=self.model)
        size = cam_output_size(output_size, inputs)
        target_t = normalize_target(target, inputs.shape[0], inputs.device)
        with LayerCapture(self.layers, require_map=True) as cap, torch.no_grad():
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
        """Input-shaped maps for a batch of images: the guided-backprop gradient times the
        Grad-CAM map of the same classes (a forward and a backward pass for each).

        ``inputs`` (N, C, H, W): a finite batch in the model's dtype (another rank is a
        ``ValueError``). ``target``: None (each sample's top-1 class), an int, or one class
        per sample. Returns a signed tensor of the input's shape. The model runs in eval
        mode (its flags restored afterwards)."""
        check_inputs(inputs, min_dim=4, model=self.model)
        if inputs.dim() != 4:
            raise ValueError(f"inputs must be images (N, C, H, W), got shape {tuple(inputs.shape)}")
        cams = self.gradcam.attribute(inputs, target=target, output_size="input")
        # the same classes for both halves, also when target is None (top-1)
        target_idx = cams.logits.argmax(1) if target is None else target
        return self.guided.attribute(inputs, target=target_idx) * cams.maps
