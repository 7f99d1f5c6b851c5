"""The planner: ask for many methods, pay for each distinct model pass once.

A method is a description of the pass it needs and how its maps come out of that
pass's results. `Explainer` groups the requested methods by pass and runs each pass
once per batch:

- ``plain``: one forward and ONE backward, ``torch.autograd.grad`` of the target scores
  to [each layer's activations..., the input]: every CAM variant and saliency (and the
  Grad-CAM half of guided Grad-CAM). Without saliency the backward stops at the first
  layer (nothing before it is recorded). Its logits are the explanation's logits.
- ``guided`` (guided backprop, and guided Grad-CAM = guided backprop x the Grad-CAM map
  of the plain pass) and ``deconvnet``: one forward and one backward each, rectifiers
  rerouted to the native rule.
- ``smoothgrad``: the noisy copies of the plain pass's input gradient, in chunks.
- ``occlusion`` and ``shapley``: forward-only batches of perturbed copies.
- ``forward``: when no gradient pass runs, one forward for the logits.

Every map is the number the method's own class gives (tests compare them); the classes
stay for users who want one method.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from . import ops
from .attr._common import Target, check_inputs, eval_mode, input_gradients, model_output, normalize_target, resolve_target
from .attr.cam import OutputSize, cam_output_size, gradcam_maps
from .attr.gradient import Saliency
from .attr.occlusion import Occlusion
from .attr.rectifiers import RectifierMode
from .attr.shapley import ShapleySampling, grid_feature_mask
from .attr.smoothgrad import SmoothGrad
from .layers import LayerCapture, LayerSpec, resolve_layers

CAM_VARIANTS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")
METHODS = (*CAM_VARIANTS, "guided-gradcam", "saliency", "smoothgrad", "guided-backprop", "deconvnet", "occlusion",
           "shapley")
DEFAULT_METHODS = ("gradcam", "guided-gradcam", "saliency", "guided-backprop")
# methods whose maps need the target layer(s)
LAYER_METHODS = (*CAM_VARIANTS, "guided-gradcam")

# the settings each configurable method's maps depend on, and their defaults
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "smoothgrad": {"n_samples": 16, "stdev": 0.15, "batch_size": 16, "seed": 0},
    "occlusion": {"window": (3, 16, 16), "strides": (3, 8, 8), "baseline": 0.0, "perturbations_per_eval": 64},
    "shapley": {"patch": 32, "n_samples": 8, "seed": 0, "baseline": 0.0, "perturbations_per_eval": 64},
}


@dataclass
class Explanation:
    """What one `Explainer.explain` call gives.

    ``maps``: one tensor per method: ``(N, H, W)`` heat maps for the CAM variants,
    saliency and SmoothGrad (of the saliency map); input-shaped ``(N, C, H, W)`` for
    guided backprop, guided Grad-CAM, deconvnet, occlusion and Shapley.
    ``logits``: the model output of the first pass. ``target``: the class index each
    sample was explained for. ``layer_maps``: per CAM variant, each layer's own map.
    ``passes``: the passes that ran, in order."""

    maps: dict[str, torch.Tensor]
    logits: torch.Tensor
    target: torch.Tensor
    layer_maps: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    passes: list[str] = field(default_factory=list)


class Explainer:
    """Many attribution methods on one model, each distinct model pass run once.

    Args:
        model: returns ``(N, num_classes)`` scores; runs in eval mode during `explain`
            (every module's flag restored afterwards).
        methods: names from `METHODS`.
        layers: the target layer(s) (modules or dotted names) of the CAM variants and
            guided Grad-CAM; several layers give the mean of their normalised maps.
        output_size: the CAM maps' size: ``"input"``, ``None`` (the layer's) or ``(H, W)``.
        options: per method, settings that replace `DEFAULT_OPTIONS`, e.g.
            ``{"smoothgrad": {"n_samples": 32}, "occlusion": {"window": (3, 8, 8)}}``.
    """

    def __init__(self, model: nn.Module, methods: Sequence[str] = DEFAULT_METHODS,
                 layers: Union[None, LayerSpec, Sequence[LayerSpec]] = None, *, output_size: OutputSize = "input",
                 options: Optional[dict[str, dict[str, Any]]] = None):
        if isinstance(methods, str):
            methods = [methods]
        methods = list(dict.fromkeys(methods))
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise ValueError(f"methods: unknown {', '.join(map(repr, unknown)) or '(none given)'}; "
                             f"choose from {', '.join(METHODS)}")
        self.model = model
        self.methods = methods
        needs_layer = [m for m in methods if m in LAYER_METHODS]
        if needs_layer and layers is None:
            raise ValueError(f"layers: {', '.join(needs_layer)} need a target layer (a module or its dotted name)")
        self.layers = resolve_layers(model, layers, arg="layers") if needs_layer else []
        self.output_size = output_size
        self.options = self._options(options or {})

    def _options(self, given: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        unknown = [m for m in given if m not in DEFAULT_OPTIONS]
        if unknown:
            raise ValueError(f"options: {', '.join(map(repr, unknown))} take no options; "
                             f"options exist for {', '.join(DEFAULT_OPTIONS)}")
        out = {}
        for method, defaults in DEFAULT_OPTIONS.items():
            extra = set(given.get(method, {})) - set(defaults)
            if extra:
                raise ValueError(f"options[{method!r}]: unknown {', '.join(sorted(extra))}; "
                                 f"known: {', '.join(defaults)}")
            out[method] = {**defaults, **given.get(method, {})}
        return out

    # ---- the plan ----------------------------------------------------------------------

    @property
    def cam_variants(self) -> list[str]:
        """The CAM variants the plain pass computes (Grad-CAM also for guided Grad-CAM)."""
        wanted = set(self.methods) | ({"gradcam"} if "guided-gradcam" in self.methods else set())
        return [v for v in CAM_VARIANTS if v in wanted]

    def plan(self) -> list[str]:
        """The passes `explain` runs per batch, in order."""
        m = set(self.methods)
        passes = []
        if self.cam_variants or "saliency" in m:
            passes.append("plain")
        if m & {"guided-backprop", "guided-gradcam"}:
            passes.append("guided")
        if "deconvnet" in m:
            passes.append("deconvnet")
        if not passes:
            passes.append("forward")
        passes += [p for p in ("smoothgrad", "occlusion", "shapley") if p in m]
        return passes

    # ---- running it --------------------------------------------------------------------

    def explain(self, inputs: torch.Tensor, target: Target = None) -> Explanation:
        """Every requested method's maps for a batch of images ``(N, C, H, W)``.

        ``target``: None (each sample's top-1 class from the first pass), an int, one
        class per sample, or an integer tensor."""
        check_inputs(inputs, min_dim=4, model=self.model)
        if inputs.dim() != 4:
            raise ValueError(f"inputs must be images (N, C, H, W), got shape {tuple(inputs.shape)}")
        size = cam_output_size(self.output_size, inputs)
        target_t = normalize_target(target, inputs.shape[0], inputs.device)
        x = inputs.detach()
        maps: dict[str, torch.Tensor] = {}
        layer_maps: dict[str, dict[str, torch.Tensor]] = {}
        logits: Optional[torch.Tensor] = None
        input_size_gradcam: Optional[torch.Tensor] = None
        passes = self.plan()
        with eval_mode(self.model):
            for kind in passes:
                if kind == "plain":
                    logits, target_t, cams, per_layer, grad_x = self._plain(x, target_t, size)
                    for variant in self.cam_variants:
                        if variant in self.methods:
                            maps[variant] = cams[variant][:, 0]
                            layer_maps[variant] = {name: m[:, 0] for (name, _), m in zip(self.layers, per_layer[variant])}
                    if "guided-gradcam" in self.methods:
                        input_size_gradcam = cams.get("gradcam@input", cams["gradcam"])
                    if grad_x is not None:
                        maps["saliency"] = ops.saliency_reduce(grad_x)
                elif kind in ("guided", "deconvnet"):
                    rule = "guided" if kind == "guided" else "deconvnet"
                    grad, pass_logits = input_gradients(self.model, x, target_t, RectifierMode(rule))
                    if logits is None:
                        logits, target_t = pass_logits, resolve_target(target_t, pass_logits)
                    if kind == "deconvnet":
                        maps["deconvnet"] = grad
                        continue
                    if "guided-backprop" in self.methods:
                        maps["guided-backprop"] = grad
                    if "guided-gradcam" in self.methods:
                        maps["guided-gradcam"] = grad * input_size_gradcam
                elif kind == "forward":
                    with torch.inference_mode():
                        logits = model_output(self.model(x)).clone()  # (a normal tensor outside inference mode)
                    target_t = resolve_target(target_t, logits)
                else:
                    maps[kind] = self._perturbation_pass(kind, x, target_t)
        return Explanation({m: maps[m] for m in self.methods}, logits, target_t, layer_maps, passes)

    def _plain(self, x: torch.Tensor, target_t: Optional[torch.Tensor], size):
        """One forward, one backward: logits, resolved targets, the CAM maps (fused and per
        layer, by variant) and the input gradient when saliency is wanted."""
        need_x = "saliency" in self.methods
        variants = self.cam_variants
        layers = self.layers if variants else []
        xin = x.detach().requires_grad_(True) if need_x else x
        # without the input gradient, autograd starts at the first layer (LayerCapture)
        capture = LayerCapture(layers, start_autograd=not need_x, require_map=True)
        with capture, (torch.enable_grad() if need_x else torch.no_grad()):
            logits = model_output(self.model(xin))
            acts = capture.get()
        target_t = resolve_target(target_t, logits)
        wrt = [*acts, xin] if need_x else acts
        with torch.enable_grad():
            score = logits.gather(1, target_t[:, None])[:, 0]
            grads = list(torch.autograd.grad(score.sum(), wrt))
        grad_x = grads.pop() if need_x else None
        cams, per_layer = {}, {}
        for variant in variants:
            cams[variant], per_layer[variant] = gradcam_maps(acts, grads, variant, size)
        if "guided-gradcam" in self.methods and size != tuple(x.shape[-2:]):
            cams["gradcam@input"], _ = gradcam_maps(acts, grads, "gradcam", tuple(x.shape[-2:]))
        return logits.detach(), target_t, cams, per_layer, grad_x

    def _perturbation_pass(self, kind: str, x: torch.Tensor, target_t: torch.Tensor) -> torch.Tensor:
        o = self.options[kind]
        if kind == "smoothgrad":
            method = SmoothGrad(Saliency(self.model), n_samples=o["n_samples"], stdev=o["stdev"],
                                batch_size=o["batch_size"], seed=o["seed"])
            return ops.saliency_reduce(method.noisy_mean(x, target_t, abs=True))
        if kind == "occlusion":
            return Occlusion(self.model).attribute(x, tuple(o["window"]), tuple(o["strides"]), baselines=o["baseline"],
                                                   target=target_t, perturbations_per_eval=o["perturbations_per_eval"])
        mask = grid_feature_mask(x.shape[2], x.shape[3], o["patch"])
        return ShapleySampling(self.model).attribute(x, mask, baselines=o["baseline"], n_samples=o["n_samples"],
                                                     target=target_t, perturbations_per_eval=o["perturbations_per_eval"],
                                                     seed=o["seed"])
