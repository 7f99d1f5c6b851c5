"""pytorch-grad-cam's CAM classes on interp_ext's paths.

The contract (pytorch-grad-cam 1.5): ``cam = GradCAM(model=m, target_layers=[layer],
reshape_transform=None)``; ``cam(input_tensor=x, targets=None | [target per sample],
aug_smooth=False, eigen_smooth=False)`` -> float32 NumPy ``(N, H, W)`` in [0, 1];
``cam.outputs``: the model output of the last pass; a context manager.

The numbers are theirs: per layer the raw map is ReLU'd, min-max scaled at the layer's
resolution (``(m - min) / (max - min + 1e-7)``), resized to the input bilinearly; the
layers' mean is ReLU'd and scaled again. Their OpenCV ``INTER_LINEAR`` resize is replaced
by ``F.interpolate(mode="bilinear", align_corners=False)``, the same formula: measured
within 2.4e-7 on [0, 1] maps when upsampling (4e-6 for non-integer downscaling, used only
by FullGrad's ``eigen_smooth``). Their epsilons are kept (Grad-CAM++'s 1e-6 in the alpha
denominator, XGrad-CAM's 1e-7, ScoreCAM's 1e-8 on masks upsampled with
``align_corners=True``), as is AblationCAM's ablation value. ``eigen_smooth`` and the
Eigen CAMs use the first principal component from NumPy's SVD (LAPACK ``gesdd``) on the
host, because its sign decides the map after the ReLU and torch's SVD (MKL, cuSOLVER)
picks the other sign for about a quarter of matrices (219 of 300 random ones agreed); the
rest runs on the model's device, batched:

- one forward recording autograd only after the first target layer and one
  ``torch.autograd.grad`` to the layers' outputs (no weight gradients; they call
  ``.backward()`` on the whole network), on a copy of the model with its eval BatchNorm
  layers folded into the convolutions (`interp_ext.fusion`; target layers kept whole), in
  channels-last layout on a CPU;
- ScoreCAM: masked images built chunk by chunk (``batch_size`` per model call, across
  images; they build all N x K masked images at once), in inference mode, channels that
  are zero everywhere sharing one call on the zero image;
- AblationCAM: the ablated copies replace the layer's output while the network before the
  layer runs on one copy of the image per call (they rerun the whole network per copy);
- FullGrad: one backward to the input and every bias layer, each layer's channel maps
  summed at its resolution and resized once (they resize every channel with OpenCV).

Differences on purpose: a ``targets`` list must have one target per sample (theirs
silently drops the samples after a shorter list), a bad argument is a ValueError /
TypeError naming it, exceptions inside ``with`` are not swallowed (theirs prints and
swallows an ``IndexError``), and ``target_layers`` given out of execution order are paired
with their own activations. Not provided: 3-D (5-D) inputs, custom ``tta_transforms``,
AblationCAM's ``ablation_layer`` (ViT / Faster R-CNN variants) and
``ratio_channels_to_ablate < 1``.
"""
from __future__ import annotations

import operator
import warnings
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ... import ops
from ...attr._common import check_inputs, eval_mode, model_output
from ...attr.cam import resize_maps, unit_scale
from ...attr.fullgrad import bias_layers, fullgrad_gradients, fullgrad_terms, sum_resized
from ...attr.score_cam import ablation_scores, ablation_weights, check_batch_size, masked_input_scores
from ...fusion import folded_copy
from ...layers import LayerCapture, resolve_layers
from ...tuning import TunedForward, model_layout
from .utils.model_targets import ClassifierOutputTarget

EPS = 1e-7  # their scale_cam_image epsilon
# their default test-time augmentation: horizontal flip x multiply, in ttach's order
AUGMENTATIONS = tuple((flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1))


# ---- targets ---------------------------------------------------------------------------------


def _category(t) -> Optional[int]:
    """The class of one of OUR ClassifierOutputTargets (scored with one gather), else None."""
    if type(t) is not ClassifierOutputTarget:
        return None
    try:
        return operator.index(t.category)
    except TypeError:
        return None


def _one_score(s, i: int) -> torch.Tensor:
    if not isinstance(s, torch.Tensor) or s.numel() != 1:
        got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise ValueError(f"targets[{i}] must return one score for its sample's output (a 1-element tensor), got {got}")
    return s.reshape(())


def _fast_categories(targets: Sequence, out: torch.Tensor) -> Optional[torch.Tensor]:
    cats = [_category(t) for t in targets]
    if out.dim() != 2 or any(c is None for c in cats):
        return None
    idx = torch.tensor(cats, dtype=torch.long, device=out.device)
    bad = [(i, c) for i, c in enumerate(cats) if not -out.shape[1] <= c < out.shape[1]]
    if bad:
        i, c = bad[0]
        raise ValueError(f"targets[{i}]: category {c} is out of range for a model with {out.shape[1]} outputs")
    return idx % out.shape[1]


def sample_scores(targets: Sequence, out: torch.Tensor) -> torch.Tensor:
    """(N,) scores: ``targets[i](out[i])`` for each sample."""
    idx = _fast_categories(targets, out)
    if idx is not None:
        return out.gather(1, idx[:, None])[:, 0]
    return torch.stack([_one_score(t(out[i]), i) for i, t in enumerate(targets)])


def copy_scorer(targets: Sequence, out: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """score(outputs of copies, (B,) image of each copy) -> (B,): each copy scored by its
    image's target."""
    idx = _fast_categories(targets, out)
    if idx is not None:
        return lambda o, rows: o.gather(1, idx[rows][:, None])[:, 0]
    return lambda o, rows: torch.stack([_one_score(targets[r](o[i]), r) for i, r in enumerate(rows.tolist())])


def top1_targets(out: torch.Tensor) -> list:
    """Their default: each sample's highest output."""
    return [ClassifierOutputTarget(int(c)) for c in out.detach().reshape(out.shape[0], -1).argmax(1).tolist()]


# ---- maps ------------------------------------------------------------------------------------


def numpy_principal_maps(t: torch.Tensor) -> torch.Tensor:
    """``(N, K, h, w)`` -> ``(N, 1, h, w)``: each sample's pixels, centred per channel,
    projected on the first right singular vector that NumPy's SVD returns (its sign: see
    the module docstring). float32, NaN counted as 0, on the host; returned on t's device."""
    a = t.detach().float().cpu().numpy()
    a = np.nan_to_num(a, nan=0.0, posinf=np.inf, neginf=-np.inf)
    n, k, h, w = a.shape
    out = np.empty((n, h * w), dtype=np.float32)
    for i in range(n):
        pts = a[i].reshape(k, h * w).T
        pts = pts - pts.mean(axis=0)
        _, _, vt = np.linalg.svd(pts, full_matrices=False)
        out[i] = pts @ vt[0]
    return torch.from_numpy(out.reshape(n, 1, h, w)).to(t.device)


def layer_to_input(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Their per-layer finishing: ReLU, scale (1e-7), bilinear resize to the input."""
    return resize_maps(unit_scale(cam.clamp(min=0), (2, 3), EPS), size)


def aggregate(layer_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Their fusion: ReLU, mean over the layers, scale (1e-7): (N, H, W)."""
    m = torch.cat(list(layer_maps), dim=1).clamp(min=0).mean(1, keepdim=True)
    return unit_scale(m, (2, 3), EPS)[:, 0]


class _Released:
    """Stands in for their ``activations_and_grads``: interp_ext keeps no hooks between
    calls, so there is nothing to release."""

    def release(self) -> None:
        pass

    def clear(self) -> None:
        pass


def _cpu_layout(model: nn.Module, x: torch.Tensor) -> torch.memory_format:
    """Channels-last on a CPU for a convolutional model (measured, 1 thread, batch 16:
    ResNet-50 forward + backward to layer4 2.36 -> 1.84 s, EfficientNet-Lite0 0.90 -> 0.55 s)."""
    if x.device.type == "cpu" and x.dim() == 4 and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return torch.channels_last
    return torch.contiguous_format


class BaseCAM:
    """What every class shares: construction, the call contract, test-time augmentation,
    and the per-layer finishing. Subclasses give ``_pass(runner, layers, x, targets,
    eigen_smooth)`` -> (outputs, [raw (N, 1, h, w) map per layer])."""

    uses_gradients = True
    fold_batchnorm = True
    channels_last = True  # the passes in channels-last on a CPU (when fast)
    needs_target_layers = True

    def __init__(self, model: nn.Module, target_layers: Sequence[nn.Module], reshape_transform: Optional[Callable] = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(target_layers, (nn.Module, str)) or not isinstance(target_layers, (list, tuple)):
            raise TypeError(f"target_layers must be a list of modules, e.g. [model.layer4[-1]], got "
                            f"{type(target_layers).__name__}")
        if reshape_transform is not None and not callable(reshape_transform):
            raise TypeError(f"reshape_transform must be callable or None, got {type(reshape_transform).__name__}")
        if self.needs_target_layers or target_layers:
            self._layers = resolve_layers(model, list(target_layers), arg="target_layers")
        else:
            self._layers = []
        self.model = model
        self.target_layers = list(target_layers)
        self.reshape_transform = reshape_transform
        self.model.eval()  # as theirs: the constructor leaves the model in eval mode
        p = next(model.parameters(), None)
        self.device = p.device if p is not None else torch.device("cpu")
        self.outputs: Optional[torch.Tensor] = None
        self.activations_and_grads = _Released()
        # False: the passes run the model itself in its own layout (no BatchNorm folding, no
        # channels-last): slower, closest to their rounding (for ill-conditioned maps such as
        # XGrad-CAM's on a layer whose activation sums nearly cancel)
        self.fast = True

    # ---- the call ----------------------------------------------------------------------

    def __call__(self, input_tensor: torch.Tensor, targets: Optional[Sequence[Callable]] = None,
                 aug_smooth: bool = False, eigen_smooth: bool = False) -> np.ndarray:
        """CAMs ``(N, H, W)`` float32 in [0, 1] for a batch ``(N, C, H, W)``.

        ``targets``: None (each sample's top class) or one callable per sample, applied to
        that sample's output (`utils.model_targets`). ``aug_smooth``: the mean over
        horizontal flip x brightness (0.9, 1, 1.1) of the CAMs (each with its own top class
        when ``targets`` is None). ``eigen_smooth``: the first principal component of the
        weighted activations instead of their sum."""
        x = self._check_call(input_tensor, targets, aug_smooth, eigen_smooth)
        targets = None if targets is None else list(targets)
        with eval_mode(self.model):
            if not aug_smooth:
                return self._maps(x, targets, eigen_smooth).float().cpu().numpy()
            cams = []
            for flip, factor in AUGMENTATIONS:
                xa = x.flip(3) if flip else x
                xa = xa * factor if factor != 1.0 else xa
                m = self._maps(xa, targets, eigen_smooth)
                cams.append(m.flip(2) if flip else m)
            return torch.stack(cams).float().mean(0).cpu().numpy()

    def forward(self, input_tensor: torch.Tensor, targets: Optional[Sequence[Callable]] = None,
                eigen_smooth: bool = False) -> np.ndarray:
        """One pass without augmentation (their ``forward``)."""
        return self(input_tensor, targets, aug_smooth=False, eigen_smooth=eigen_smooth)

    def _check_call(self, input_tensor, targets, aug_smooth, eigen_smooth) -> torch.Tensor:
        if not isinstance(input_tensor, torch.Tensor):
            raise TypeError(f"input_tensor must be a torch.Tensor, got {type(input_tensor).__name__}")
        for name, flag in (("aug_smooth", aug_smooth), ("eigen_smooth", eigen_smooth)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        x = input_tensor.detach().to(self.device)
        check_inputs(x, name="input_tensor", min_dim=4, model=self.model)
        if x.dim() != 4:
            raise ValueError(f"input_tensor must be a batch of images (N, C, H, W), got shape {tuple(x.shape)} "
                             "(3-D inputs are not supported)")
        if targets is not None:
            if not isinstance(targets, (list, tuple)):
                raise TypeError(f"targets must be None or a list of callables, got {type(targets).__name__}")
            if len(targets) != x.shape[0]:
                raise ValueError(f"targets must give one target per sample ({x.shape[0]}), got {len(targets)}")
            bad = [i for i, t in enumerate(targets) if not callable(t)]
            if bad:
                raise TypeError(f"targets[{bad[0]}] must be callable (e.g. ClassifierOutputTarget(category)), got "
                                f"{type(targets[bad[0]]).__name__}")
        self._check_settings()
        return x

    def _check_settings(self) -> None:
        pass

    # ---- the passes --------------------------------------------------------------------

    def _runner(self) -> tuple[nn.Module, list[tuple[str, nn.Module]]]:
        """The model the passes run (the BatchNorm-folded copy, target layers kept) and its
        target layers."""
        names = [name for name, _ in self._layers]
        copy = folded_copy(self.model, names) if self.fold_batchnorm and self.fast else None
        if copy is None:
            return self.model, self._layers
        try:
            return copy, [(name, copy.get_submodule(name)) for name in names]
        except AttributeError:
            return self.model, self._layers

    def _reshaped(self, t: torch.Tensor) -> torch.Tensor:
        return self.reshape_transform(t) if self.reshape_transform is not None else t

    def _maps(self, x: torch.Tensor, targets: Optional[list], eigen_smooth: bool) -> torch.Tensor:
        runner, layers = self._runner()
        fmt = _cpu_layout(runner, x) if self.fast and self.channels_last else torch.contiguous_format
        with model_layout(runner, fmt):
            out, cams = self._pass(runner, layers, x.contiguous(memory_format=fmt), targets, eigen_smooth)
        self.outputs = out
        return self._finish(cams, (x.shape[-2], x.shape[-1]))

    def _finish(self, cams: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        return aggregate([layer_to_input(c.float(), size) for c in cams])

    def _capture(self, runner, layers, x):
        """Forward only (inference mode): the outputs and each layer's (reshaped) output."""
        with LayerCapture(layers, detach=True, arg="target_layers") as cap, torch.inference_mode():
            out = model_output(runner(x))
            acts = cap.get()
        return out.clone(), [self._reshaped(a).clone() for a in acts]

    def _gradients(self, runner, layers, x, targets):
        """One forward (autograd from the first layer on) and one backward to the layers."""
        with LayerCapture(layers, start_autograd=True, arg="target_layers") as cap, torch.no_grad():
            out = model_output(runner(x))
            acts = cap.get()
        targets = targets if targets is not None else top1_targets(out)
        with torch.enable_grad():
            s = sample_scores(targets, out)
            grads = torch.autograd.grad(s.sum(), acts, allow_unused=True)
        grads = [torch.zeros_like(a) if g is None else g for a, g in zip(acts, grads)]
        return out.detach(), [self._reshaped(a.detach()) for a in acts], [self._reshaped(g) for g in grads]

    def _check_maps(self, t: torch.Tensor) -> None:
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"target_layers: the (reshaped) activations must be (N, C, h, w), got shape "
                             f"{tuple(t.shape)}: give a reshape_transform for token outputs")

    def _pass(self, runner, layers, x, targets, eigen_smooth):
        out, acts, grads = self._gradients(runner, layers, x, targets)
        cams = []
        for a, g in zip(acts, grads):
            self._check_maps(a)
            cams.append(self._layer_cam(a, g, eigen_smooth))
        return out, cams

    def _layer_cam(self, acts: torch.Tensor, grads: torch.Tensor, eigen_smooth: bool) -> torch.Tensor:
        """The raw (N, 1, h, w) map of one layer; channel-weight methods give weights."""
        w = self._weights(acts, grads)
        if eigen_smooth:
            return numpy_principal_maps(w[:, :, None, None] * acts)
        return (w[:, :, None, None] * acts).sum(1, keepdim=True)

    def _weights(self, acts, grads):
        raise NotImplementedError

    # ---- lifetime ----------------------------------------------------------------------

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, exc_tb):
        self.activations_and_grads.release()
        return False

    def __del__(self):
        pass  # no hooks outlive a call


class GradCAM(BaseCAM):
    """Grad-CAM: channel weights = spatial mean of the gradients."""

    def _layer_cam(self, acts, grads, eigen_smooth):
        if eigen_smooth:
            return super()._layer_cam(acts, grads, eigen_smooth)
        return ops.gradcam(acts.contiguous(), grads.contiguous(), variant="gradcam", relu=False, normalize=False)

    def _weights(self, acts, grads):
        return grads.mean((2, 3))


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ with their 1e-6 in the alpha denominator."""

    def _weights(self, acts, grads):
        g2 = grads * grads
        alpha = g2 / (2 * g2 + acts.sum((2, 3), keepdim=True) * g2 * grads + 1e-6)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        return (grads.clamp(min=0) * alpha).sum((2, 3))


class XGradCAM(BaseCAM):
    """XGrad-CAM with their 1e-7 on the activation sum."""

    def _weights(self, acts, grads):
        return (grads * acts / (acts.sum((2, 3), keepdim=True) + 1e-7)).sum((2, 3))


class _ElementWise(BaseCAM):
    native: Optional[str] = None

    def _elements(self, acts, grads):
        raise NotImplementedError

    def _layer_cam(self, acts, grads, eigen_smooth):
        if eigen_smooth:
            return numpy_principal_maps(self._elements(acts, grads))
        if self.native:
            return ops.gradcam(acts.contiguous(), grads.contiguous(), variant=self.native, relu=False, normalize=False)
        return self._elements(acts, grads).sum(1, keepdim=True)


class LayerCAM(_ElementWise):
    """LayerCAM: positive gradients x activations, element-wise."""

    native = "layercam"

    def _elements(self, acts, grads):
        return grads.clamp(min=0) * acts


class HiResCAM(_ElementWise):
    """HiResCAM: gradients x activations, element-wise."""

    native = "hirescam"

    def _elements(self, acts, grads):
        return grads * acts

    def _layer_cam(self, acts, grads, eigen_smooth):
        if eigen_smooth:
            warnings.warn("HiResCAM's faithfulness guarantees do not hold if smoothing is applied", stacklevel=4)
        return super()._layer_cam(acts, grads, eigen_smooth)


class GradCAMElementWise(_ElementWise):
    """Element-wise ReLU(gradients x activations), summed over channels."""

    def _elements(self, acts, grads):
        return (grads * acts).clamp(min=0)


class EigenGradCAM(BaseCAM):
    """The first principal component of gradients x activations (``eigen_smooth`` has no
    further effect)."""

    def _layer_cam(self, acts, grads, eigen_smooth):
        return numpy_principal_maps(grads * acts)


class EigenCAM(BaseCAM):
    """The first principal component of the activations: forward only, class agnostic
    (``targets`` and ``eigen_smooth`` have no effect)."""

    uses_gradients = False

    def _pass(self, runner, layers, x, targets, eigen_smooth):
        out, acts = self._capture(runner, layers, x)
        for a in acts:
            self._check_maps(a)
        return out, [numpy_principal_maps(a) for a in acts]


class _PerturbationCAM(BaseCAM):
    uses_gradients = False

    def __init__(self, model, target_layers, reshape_transform=None, batch_size: int = 16, show_progress: bool = True):
        super().__init__(model, target_layers, reshape_transform)
        self.batch_size = batch_size
        self.show_progress = show_progress
        self._check_settings()

    def _check_settings(self) -> None:
        check_batch_size(self.batch_size)
        if not isinstance(self.show_progress, bool):
            raise TypeError(f"show_progress must be True or False, got {self.show_progress!r}")

    def _pass(self, runner, layers, x, targets, eigen_smooth):
        out, acts = self._capture(runner, layers, x)
        targets = targets if targets is not None else top1_targets(out)
        scorer = copy_scorer(targets, out)
        cams = []
        for layer, a in zip(layers, acts):
            self._check_maps(a)
            w = self._channel_weights(runner, layer, x, a, out, scorer)
            cams.append(numpy_principal_maps(w[:, :, None, None] * a) if eigen_smooth
                        else (w[:, :, None, None] * a).sum(1, keepdim=True))
        return out, cams


class ScoreCAM(_PerturbationCAM):
    """Score-CAM: weights = softmax over the channels of the target's score of the image
    masked by each channel (upsampled with ``align_corners=True``, scaled with 1e-8).
    ``batch_size`` (default 16, as theirs; also settable as ``cam.batch_size``): masked
    images built per step, the memory bound; with ``fast`` each step runs in the batch size
    (within it) and layout measured fastest (`interp_ext.tuning`: on the bundled model 1
    thread, 24 ms per masked image at 8 channels-last vs 50 ms at 16 NCHW, theirs).
    ``show_progress``: a tqdm bar (theirs always shows one)."""

    channels_last = False  # the tuner picks the layout of the masked batches

    def _channel_weights(self, runner, layer, x, acts, out, scorer):
        forward = TunedForward(runner, "compat:scorecam") if self.fast else runner
        s = masked_input_scores(forward, x, acts, scorer, batch_size=self.batch_size, align_corners=True, eps=1e-8,
                                show_progress=self.show_progress, desc="ScoreCAM")
        return torch.softmax(s, dim=1).to(acts.dtype)


class AblationCAM(_PerturbationCAM):
    """Ablation-CAM: weights = ``(s - s_k) / s``, ``s_k`` the target's score with channel k
    of the layer ablated: set to 0 when the layer's output for that image has minimum 0,
    else to ``min - 1e7``, ``min - 2e7``, ... by the channel's place in its batch of
    ``batch_size`` (their AblationLayer lowers the running minimum once per copy; the
    value used is reproduced exactly). ``batch_size`` default 32, as theirs."""

    def __init__(self, model, target_layers, reshape_transform=None, ablation_layer=None, batch_size: int = 32,
                 ratio_channels_to_ablate: float = 1.0, show_progress: bool = True):
        if ablation_layer is not None and type(ablation_layer).__name__ != "AblationLayer":  # (theirs: the default)
            raise ValueError("ablation_layer: only the default ablation (of a (N, C, h, w) layer output) is provided; "
                             "pytorch-grad-cam's AblationLayerVit / AblationLayerFasterRCNN variants are not")
        if ratio_channels_to_ablate != 1.0:
            raise ValueError(f"ratio_channels_to_ablate: only 1.0 (every channel) is provided, got {ratio_channels_to_ablate!r}")
        if reshape_transform is not None:
            raise ValueError("reshape_transform: AblationCAM ablates channels of the layer's own (N, C, h, w) output; "
                             "token outputs need pytorch-grad-cam's AblationLayerVit, which is not provided")
        super().__init__(model, target_layers, None, batch_size, show_progress)
        self.ratio_channels_to_ablate = 1.0

    def _channel_weights(self, runner, layer, x, acts, out, scorer):
        n = x.shape[0]
        with torch.inference_mode():
            base = scorer(out, torch.arange(n, device=out.device)).float()
        values = _their_ablation_values(acts, self.batch_size)
        s = ablation_scores(runner, layer, x, acts, base, scorer, batch_size=self.batch_size, values=values,
                            show_progress=self.show_progress, desc="AblationCAM")
        return ablation_weights(base, s).to(acts.dtype)


def _their_ablation_values(acts: torch.Tensor, batch_size: int):
    """Their ablation value of channel k of image n: 0 if the image's layer output has
    minimum 0; else its minimum lowered by 1e7 once per copy up to the channel's place in
    its batch (channels ``[j * batch_size, (j + 1) * batch_size)`` share a batch), in
    float32 as they compute it."""
    mins = acts.detach().flatten(1).amin(1).float().cpu().numpy()
    tables = {}

    def values(img: int, chans: torch.Tensor) -> torch.Tensor:
        m = np.float32(mins[img])
        if m == 0:
            return torch.zeros(chans.shape[0], device=chans.device)
        if img not in tables:
            seq = np.empty(batch_size, dtype=np.float32)
            v = m
            for i in range(batch_size):
                v = np.float32(v - np.float32(1e7))
                seq[i] = v
            tables[img] = torch.from_numpy(seq).to(chans.device)
        return tables[img][chans % batch_size]

    return values


class FullGrad(BaseCAM):
    """FullGrad: the input-gradient term plus the bias-gradient term of every ``Conv2d`` and
    ``BatchNorm2d`` with a bias (exactly those types, as theirs); ``target_layers`` is
    ignored (a warning when given). No ReLU; ``eigen_smooth``: the principal component of
    the terms at 1/8 of the input's size."""

    fold_batchnorm = False
    needs_target_layers = False

    def __init__(self, model, target_layers, reshape_transform=None):
        if isinstance(target_layers, (list, tuple)) and len(target_layers) > 0:
            warnings.warn("target_layers is ignored in FullGrad: all bias layers are used instead", stacklevel=2)
        super().__init__(model, target_layers, reshape_transform)
        self._layers = []
        self._bias = bias_layers(model, lambda m: type(m) in (nn.Conv2d, nn.BatchNorm2d) and m.bias is not None)

    def _maps(self, x, targets, eigen_smooth):
        # the model's own layout: each channel's term is min-max scaled on its own, and a
        # nearly constant one turns the rounding of another summation order into visible
        # differences (channels-last: 5e-3 on the bundled model's map, vs 7e-7 in NCHW),
        # and channels-last was not faster for this one backward to every layer
        fmt = torch.contiguous_format
        size = (x.shape[-2], x.shape[-1])
        with model_layout(self.model, fmt):
            xin = x.contiguous(memory_format=fmt)
            score = (lambda out: sample_scores(targets if targets is not None else top1_targets(out), out))
            out, gx, grads = fullgrad_gradients(self.model, self._bias, xin, score)
        self.outputs = out
        grads = [self._reshaped(g) for g in grads]
        inp, per_layer = fullgrad_terms(x, gx, self._bias, grads, eps=EPS)
        if not eigen_smooth:
            total = inp.sum(1, keepdim=True)
            if per_layer:
                total = total + sum_resized(per_layer, size)
            return unit_scale(total, (2, 3), EPS)[:, 0]
        terms = torch.cat([inp, *(resize_maps(m, size) for m in per_layer)], dim=1)
        small = resize_maps(unit_scale(terms, (2, 3), EPS), (size[0] // 8, size[1] // 8))
        proj = numpy_principal_maps(small)
        up = resize_maps(unit_scale(proj, (2, 3), EPS), size)
        return unit_scale(up, (2, 3), EPS)[:, 0]
