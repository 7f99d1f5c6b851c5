"""The methods ``interp-ext explain`` knows: their names, what each map is (a heat map or a
signed input-shaped map) and how it is drawn, the options its maps depend on, and the
layer the CAM family uses.

This module only *describes* the methods. How a batch's maps are computed is the job's
``compute_batch`` (:mod:`interp_ext.explain`); a method's ``options`` here are what its
maps depend on, recorded with every image, so that a re-run with other options redoes
the image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image

from . import engine, viz

# Grad-CAM layers of the models we ship or name; other models get the last spatial layer.
KNOWN_CAM_LAYERS = {"efficientnet_lite0": "_blocks.15"}
TORCHVISION_CAM_LAYERS = {"resnet": "layer4", "resnext": "layer4", "wide_resnet": "layer4", "vgg": "features",
                          "densenet": "features", "mobilenet": "features", "efficientnet": "features",
                          "convnext": "features", "regnet": "trunk_output"}


@dataclass(frozen=True)
class Settings:
    """The method settings a user can change (``--occlusion-window`` ...). The defaults are
    those of the command line; :meth:`check` names the option of a bad value."""

    occlusion_window: int = 16
    occlusion_stride: int = 8
    smoothgrad_samples: int = 16
    ig_steps: int = 32
    shapley_patch: int = 32
    shapley_samples: int = 8
    # perturbed copies per model call over the whole batch: the memory bound of occlusion,
    # Shapley and SmoothGrad (see copies_per_image); it does not change any map
    perturbations_per_eval: int = 64

    OPTIONS = {"occlusion_window": "--occlusion-window", "occlusion_stride": "--occlusion-stride",
               "smoothgrad_samples": "--smoothgrad-samples", "ig_steps": "--ig-steps", "shapley_patch": "--shapley-patch",
               "shapley_samples": "--shapley-samples", "perturbations_per_eval": "--perturbations-per-eval"}

    def check(self, input_size: int | None = None) -> "Settings":
        """Every value a positive int, the stride at most the window (as Captum), and, once
        the model's input size is known, the window and the patch at most that size."""
        for name, flag in self.OPTIONS.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{flag} must be a positive integer, got {v!r}")
        if self.occlusion_stride > self.occlusion_window:
            raise ValueError(f"--occlusion-stride {self.occlusion_stride} must not exceed --occlusion-window "
                             f"{self.occlusion_window} (pixels no window covers would get no attribution)")
        if input_size is not None:
            for name in ("occlusion_window", "shapley_patch"):
                if getattr(self, name) > input_size:
                    raise ValueError(f"{self.OPTIONS[name]} {getattr(self, name)} is larger than the model's input "
                                     f"size {input_size}")
        return self


def copies_per_image(perturbations_per_eval: int, batch: int) -> int:
    """Perturbed copies of each image per model call, so that one call of a batch of
    `batch` images sees at most ``max(perturbations_per_eval, batch)`` copies:
    ``max(1, perturbations_per_eval // batch)``."""
    return max(1, perturbations_per_eval // max(1, batch))


def smoothgrad_chunk(perturbations_per_eval: int, batch: int) -> int:
    """Noisy SmoothGrad copies per model call. They also run a backward, which keeps the
    activations, so they go through at a quarter of ``perturbations_per_eval`` (and at
    least one copy per image of the batch): 16 at the defaults, as before."""
    return max(batch, perturbations_per_eval // 4)


@dataclass(frozen=True)
class Method:
    """One explanation as the job sees it.

    ``picture``: how its per-image map is drawn: "heat" ((H, W), overlaid on the crop),
    "signed" ((3, H, W) signed gradient picture), "channels" ((3, H, W) signed, summed over
    channels, then overlaid with the diverging colormap). ``needs_layer``: a CAM-family method (uses ``--layer``).
    ``options(settings)``: the settings its maps depend on, recorded with every image."""

    picture: str
    needs_layer: bool = False
    help: str = ""
    options: Callable[[Settings], dict] = lambda s: {}

    @property
    def shape(self) -> str:
        """The shape of one image's map: "(H, W)" or "(3, H, W)"."""
        return "(H, W)" if self.picture == "heat" else "(3, H, W)"


def _smoothgrad_options(s: Settings) -> dict:
    return {"n_samples": s.smoothgrad_samples, "stdev": 0.15, "seed": 0, "abs": True}


def _integrated_gradients_options(s: Settings) -> dict:
    return {"n_steps": s.ig_steps, "method": "gausslegendre", "baseline": 0}


def _occlusion_options(s: Settings) -> dict:
    return {"window": [3, s.occlusion_window, s.occlusion_window], "strides": [3, s.occlusion_stride, s.occlusion_stride],
            "baseline": 0}


def _shapley_options(s: Settings) -> dict:
    return {"patch": s.shapley_patch, "n_samples": s.shapley_samples, "seed": 0, "baseline": 0}


METHODS: dict[str, Method] = {
    "gradcam": Method("heat", True, "Grad-CAM (Selvaraju et al.)"),
    "gradcam++": Method("heat", True, "Grad-CAM++"),
    "xgradcam": Method("heat", True, "XGrad-CAM"),
    "layercam": Method("heat", True, "LayerCAM"),
    "hirescam": Method("heat", True, "HiResCAM"),
    "guided-gradcam": Method("signed", True, "guided backprop x Grad-CAM"),
    "saliency": Method("heat", False, "Simonyan et al. max |gradient| over channels"),
    "smoothgrad": Method("heat", False, "SmoothGrad of the saliency map over --smoothgrad-samples noisy copies", _smoothgrad_options),
    "guided-backprop": Method("signed", False, "Springenberg et al."),
    "deconvnet": Method("signed", False, "Zeiler & Fergus"),
    "occlusion": Method("channels", False, "square windows of --occlusion-window at --occlusion-stride, baseline 0", _occlusion_options),
    "shapley": Method("channels", False, "Shapley sampling of --shapley-patch patches, --shapley-samples permutations",
                      _shapley_options),
    "eigencam": Method("heat", True, "EigenCAM: first principal component of the layer's activations"),
    "eigengradcam": Method("heat", True, "EigenGradCAM: first principal component of gradients x activations"),
    "scorecam": Method("heat", True, "Score-CAM: the score of the image masked by each channel of the layer"),
    "ablationcam": Method("heat", True, "Ablation-CAM: the score drop with each channel of the layer set to 0"),
    "fullgrad": Method("heat", False, "FullGrad: the input-gradient and every bias-gradient term"),
    "input-x-gradient": Method("channels", False, "the input times its gradient (from the plain backward pass)"),
    "integrated-gradients": Method("channels", False, "integrated gradients from the zero baseline (of the normalised "
                                   "input), --ig-steps Gauss-Legendre points", _integrated_gradients_options),
}
DEFAULT_METHODS = engine.DEFAULT_METHODS  # the planner knows the same names (a test checks)


def parse_methods(spec: str) -> list[str]:
    """The method names of a comma-separated ``--methods`` value, in order, duplicates
    dropped. An unknown name, or none at all, is a ``ValueError`` listing the choices."""
    names = [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise ValueError(f"--methods: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def method_options(methods, settings: Settings) -> dict[str, dict]:
    """{method: the options its maps depend on} for the requested methods."""
    return {m: METHODS[m].options(settings) for m in methods}


def picture(kind: str, crop: Image.Image, amap: torch.Tensor) -> Image.Image:
    """One image's map drawn as its method's ``picture`` kind says."""
    if kind == "heat":
        return viz.overlay(crop, amap)
    if kind == "signed":
        return viz.gradient_image(amap)
    return viz.signed_overlay(crop, amap.sum(0))  # occlusion, Shapley: negative, zero and positive apart


def layer_outputs(model: torch.nn.Module, input_size: int) -> list[tuple[str, int, int]]:
    """``(name, h, w)`` for every call of a named layer whose output is a (N, C, h, w)
    map, in the order the calls end, from one forward of a blank image (a layer called
    twice is listed twice). The one source of :func:`default_layer` and of the layers
    ``--layer`` accepts."""
    names = {m: n for n, m in model.named_modules() if n}
    calls: list[tuple[str, int, int]] = []

    def hook(module, args, output):
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            calls.append((names[module], int(output.shape[2]), int(output.shape[3])))

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        p = next(model.parameters(), None)
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size, device=p.device if p is not None else "cpu",
                              dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32))
    finally:
        for h in handles:
            h.remove()
    return calls


def _cam_layers(calls: list[tuple[str, int, int]]) -> list[str]:
    """The names in :func:`layer_outputs`' `calls` whose map is larger than 1x1, each once,
    in the order they first run."""
    return list(dict.fromkeys(n for n, h, w in calls if h > 1 and w > 1))


def spatial_layers(model: torch.nn.Module, input_size: int) -> list[str]:
    """The names of the layers a CAM can use, in the order they first run: an output that
    is a (N, C, h, w) map with h, w > 1 (:func:`layer_outputs`; a 1x1 map, as after global
    pooling, gives a flat CAM)."""
    return _cam_layers(layer_outputs(model, input_size))


def default_layer(model_name: str, model: torch.nn.Module, input_size: int) -> str:
    """The Grad-CAM layer: a known one, else the last module (in execution order) whose
    output is a spatial (N, C, h, w) map with h, w > 1 (:func:`layer_outputs`)."""
    if model_name in KNOWN_CAM_LAYERS:
        return KNOWN_CAM_LAYERS[model_name]
    for prefix, layer in TORCHVISION_CAM_LAYERS.items():
        if model_name.startswith(prefix) and layer in dict(model.named_modules()):
            return layer
    last = [n for n, h, w in layer_outputs(model, input_size) if h > 1 and w > 1]
    if not last:
        raise ValueError("--layer: the model has no layer with a spatial output; name one with --layer")
    return last[-1]
