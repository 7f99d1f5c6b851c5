"""The planner: ask for many methods, pay for each distinct model pass once.

A method is a description of the passes it needs and how its maps come out of their
results. `Explainer` groups the requested methods and runs each distinct pass once per
batch:

- one ``forward`` for every gradient method; with rectifier methods (guided backprop,
  guided Grad-CAM, deconvnet) it records switchable rectifiers (forward values
  unchanged) so that several backward passes share it;
- ``backward:plain``: ONE ``torch.autograd.grad`` of the target scores to [each layer's
  activations..., the bias layers' outputs..., the input] for every CAM variant,
  EigenGradCAM, FullGrad and saliency (the Grad-CAM half of guided Grad-CAM too); without
  an input gradient it stops at the first layer and nothing before the layer is recorded;
  EigenCAM needs only the forward's activations;
- ``backward:guided`` (guided backprop; guided Grad-CAM = guided backprop x the Grad-CAM
  map of the plain backward) and ``backward:deconvnet``: to the input;
- ``smoothgrad``: the noisy copies of the input gradient, in chunks;
  ``integrated-gradients``: the points of the path from the baseline, in chunks
  (input x gradient comes from the plain backward's input gradient);
- ``occlusion`` and ``shapley``: forward-only batches of perturbed copies;
- ``scorecam`` and ``ablationcam``: forward-only batches of masked images / ablated layer
  outputs, from the forward's activations of the target layer(s).

The forward's logits are the explanation's logits (with no gradient method it runs in
inference mode). Every map is the number the method's own class gives (tests compare them); the classes
stay for users who want one method.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from . import ops
from .attr._common import Target, check_inputs, eval_mode, model_output, normalize_target, resolve_target
from .attr.cam import OutputSize, cam_output_size, fuse_layer_maps, gradcam_maps, resize_maps, unit_scale
from .attr.eigen_cam import eigen_grad_maps, eigen_maps
from .attr.fullgrad import bias_layers, fullgrad_terms, sum_resized
from .attr.score_cam import ablation_scores, ablation_weights, copy_scores, masked_input_scores, weighted_map
from .attr.gradient import IntegratedGradients, Saliency
from .attr.occlusion import Occlusion
from .attr.rectifiers import BackwardRule, RectifierMode
from .attr.shapley import ShapleySampling, grid_feature_mask
from .attr.smoothgrad import SmoothGrad
from .fusion import folded_copy
from .layers import LayerCapture, LayerSpec, resolve_layers
from .tuning import TunedForward, run_tuned, tuner_for

CAM_VARIANTS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")
# CAMs of the target layer(s) beyond the native variants: the forward's activations
# (eigencam), the plain backward (eigengradcam), their own forward-only batches (the rest)
EIGEN_CAMS = ("eigencam", "eigengradcam")
PERTURBATION_CAMS = ("scorecam", "ablationcam")
METHODS = (*CAM_VARIANTS, "guided-gradcam", "saliency", "smoothgrad", "guided-backprop", "deconvnet", "occlusion",
           "shapley", *EIGEN_CAMS, *PERTURBATION_CAMS, "fullgrad", "input-x-gradient", "integrated-gradients")
DEFAULT_METHODS = ("gradcam", "guided-gradcam", "saliency", "guided-backprop")
# methods whose maps need the target layer(s)
LAYER_METHODS = (*CAM_VARIANTS, "guided-gradcam", *EIGEN_CAMS, *PERTURBATION_CAMS)
PERTURBATION_PASSES = ("smoothgrad", "integrated-gradients", "occlusion", "shapley", *PERTURBATION_CAMS)
# methods that read the plain backward's input gradient
INPUT_GRADIENT_METHODS = ("saliency", "fullgrad", "input-x-gradient")

# the settings each configurable method's maps depend on, and their defaults
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "smoothgrad": {"n_samples": 16, "stdev": 0.15, "batch_size": 16, "seed": 0},
    "integrated-gradients": {"n_steps": 32, "method": "gausslegendre", "baseline": 0.0, "batch_size": 16},
    "occlusion": {"window": (3, 16, 16), "strides": (3, 8, 8), "baseline": 0.0, "perturbations_per_eval": 64},
    "shapley": {"patch": 32, "n_samples": 8, "seed": 0, "baseline": 0.0, "perturbations_per_eval": 64},
    # copies per model call: the memory bound only, the maps do not depend on it
    "scorecam": {"batch_size": 32},
    "ablationcam": {"batch_size": 32},
}


@dataclass
class Explanation:
    """What one `Explainer.explain` call gives.

    ``maps``: one tensor per method: ``(N, H, W)`` heat maps for the CAM variants (and
    the Eigen, Score, Ablation CAMs), FullGrad (at the input's size unless ``output_size``
    is (H, W)), saliency and SmoothGrad (of the saliency map); input-shaped ``(N, C, H, W)`` for
    guided backprop, guided Grad-CAM, deconvnet, occlusion, Shapley, input x gradient and
    integrated gradients.
    ``logits``: the model output of the first pass. ``target``: the class index each
    sample was explained for. ``layer_maps``: per CAM variant, each layer's own map.
    ``passes``: the passes that ran, in order. ``seconds``: wall time of the gradient
    pass (the forward and its backward passes, with the map reductions: "gradient") and of
    each method with its own batches ("smoothgrad", "occlusion", "shapley", "scorecam",
    "ablationcam")."""

    maps: dict[str, torch.Tensor]
    logits: torch.Tensor
    target: torch.Tensor
    layer_maps: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    passes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


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
        tune: run the gradient pass and the occlusion / Shapley copies at the fastest
            batch size within the given one and the faster memory format, measured on
            the work itself (`interp_ext.tuning`), on a copy of the model with its eval
            BatchNorm layers folded into the convolutions (`interp_ext.fusion`, made
            again when the model's parameters change). Maps equal to float rounding, except
            where a rectifier's input lies within rounding of its bound and the gradient
            takes the other side: measured on the bundled model, 68 of 50,176 saliency
            pixels of 1 image in 3 moved by more than 0.1% of the map's maximum (at most 1.1%).
            ``False`` keeps the exact batching and the model itself: the whole batch in
            one pass, NCHW.
    """

    def __init__(self, model: nn.Module, methods: Sequence[str] = DEFAULT_METHODS,
                 layers: Union[None, LayerSpec, Sequence[LayerSpec]] = None, *, output_size: OutputSize = "input",
                 options: Optional[dict[str, dict[str, Any]]] = None, tune: bool = True):
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
        self.bias_layers = bias_layers(model) if "fullgrad" in methods else []
        self.output_size = output_size
        self.options = self._options(options or {})
        self.tune = tune

    def _runner(self) -> tuple[nn.Module, list[tuple[str, nn.Module]]]:
        """The model the passes run, and its target layers: with ``tune`` the BatchNorm-
        folded copy (kept while the model's parameters and buffers are unchanged)."""
        if not self.tune:
            return self.model, self.layers
        names = [name for name, _ in self.layers]
        # FullGrad's terms are the BatchNorm layers' own biases: keep them (nothing folds)
        keep = names + [name for name, _ in self.bias_layers if name not in names]
        copy = folded_copy(self.model, keep)
        if copy is None:
            return self.model, self.layers
        return copy, [(name, copy.get_submodule(name)) for name in names]
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

    def backward_rules(self) -> list[str]:
        """The backward passes of the gradient pass: "plain" (CAM variants, EigenGradCAM,
        FullGrad, saliency), "guided" (guided backprop and guided Grad-CAM), "deconvnet"."""
        m = set(self.methods)
        rules = ["plain"] if self.cam_variants or m & {"eigengradcam", *INPUT_GRADIENT_METHODS} else []
        if m & {"guided-backprop", "guided-gradcam"}:
            rules.append("guided")
        if "deconvnet" in m:
            rules.append("deconvnet")
        return rules

    def plan(self) -> list[str]:
        """The passes `explain` runs per batch, in order: one "forward" (shared by every
        backward pass after it), "backward:<rule>" per backward rule, then the methods
        that run their own batches ("smoothgrad", "occlusion", "shapley", "scorecam",
        "ablationcam")."""
        passes = ["forward", *(f"backward:{rule}" for rule in self.backward_rules())]
        return passes + [p for p in PERTURBATION_PASSES if p in self.methods]

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
        seconds: dict[str, float] = {}

        def timed(kind: str, fn, *args):
            t0 = time.perf_counter()
            out = fn(*args)
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            seconds[kind] = time.perf_counter() - t0
            return out

        with eval_mode(self.model):
            model, layers = self._runner()
            logits, target_t, maps, layer_maps = timed("gradient", self._chunked_gradient_pass, x, target_t, size,
                                                       model, layers)
            acts = layer_maps.pop("__activations__", {})
            for kind in PERTURBATION_PASSES:
                if kind in PERTURBATION_CAMS and kind in self.methods:
                    maps[kind], layer_maps[kind] = timed(kind, self._perturbation_cam_pass, kind, x, target_t, size,
                                                         logits, [acts[name] for name, _ in layers], model, layers)
                elif kind in self.methods:
                    maps[kind] = timed(kind, self._perturbation_pass, kind, x, target_t, model)
        return Explanation({m: maps[m] for m in self.methods}, logits, target_t, layer_maps, self.plan(), seconds)

    def _chunked_gradient_pass(self, x: torch.Tensor, target_t: Optional[torch.Tensor], size, model: nn.Module,
                               layers: list):
        """`_gradient_pass` over the batch in the tuner's chunks (the whole batch untuned)."""
        names: list[tuple[str, Optional[str]]] = []  # (method, layer or None): the order of the flat outputs

        def step(chunk: torch.Tensor, start: int) -> list[torch.Tensor]:
            t = None if target_t is None else target_t[start : start + chunk.shape[0]]
            logits, t, maps, layer_maps = self._gradient_pass(chunk, t, size, model, layers)
            flat = [(m, None, v) for m, v in maps.items()]
            flat += [(m, layer, v) for m, per in layer_maps.items() for layer, v in per.items()]
            names[:] = [(m, layer) for m, layer, _ in flat]
            return [logits, t, *(v for _, _, v in flat)]

        tuner = tuner_for(model, "gradient:" + ",".join(self.plan()), x) if self.tune else None
        logits, target_t, *values = run_tuned(tuner, x, x.shape[0], step, model)
        maps, layer_maps = {}, {}
        for (method, layer), v in zip(names, values):
            if layer is None:
                maps[method] = v
            else:
                layer_maps.setdefault(method, {})[layer] = v
        return logits, target_t, maps, layer_maps

    def _gradient_pass(self, x: torch.Tensor, target_t: Optional[torch.Tensor], size, model: nn.Module,
                       layers: list):
        """One forward; then one backward per rule, each to what its methods need: the
        layers' activations (CAM variants) and the input (saliency, rectifier rules).
        With a rectifier rule the forward records switchable rectifiers (their forward
        values unchanged) and the graph is kept between the backward passes."""
        rules = self.backward_rules()
        methods = set(self.methods)
        saliency = "saliency" in methods
        fullgrad = "fullgrad" in methods
        input_grad_wanted = bool(methods & set(INPUT_GRADIENT_METHODS))
        rectified = any(r != "plain" for r in rules)
        need_x = input_grad_wanted or rectified
        variants = self.cam_variants
        layer_grads = bool(variants) or "eigengradcam" in methods  # methods differentiating to the layers
        layers = layers if variants or methods & {*EIGEN_CAMS, *PERTURBATION_CAMS} else []
        # FullGrad's bias layers (in the runner, which keeps them whole), captured with the target layers
        biases = [(name, model.get_submodule(name)) for name, _ in self.bias_layers] if fullgrad else []
        captured = list({name: (name, m) for name, m in [*layers, *biases]}.values())
        switch = BackwardRule() if rectified else None
        xin = x.detach().requires_grad_(True) if need_x else x
        # without an input gradient autograd starts at the first layer (LayerCapture);
        # with no backward pass at all the forward runs in inference mode
        capture = LayerCapture(captured, start_autograd=not need_x, require_map=True)
        grad_mode = torch.enable_grad() if need_x else torch.no_grad() if rules else torch.inference_mode()
        with capture, grad_mode, (RectifierMode(switch) if switch else contextlib.nullcontext()):
            logits = model_output(model(xin))
            out = dict(zip((name for name, _ in captured), capture.get()))
        acts = [out[name] for name, _ in layers]
        bias_acts = [out[name] for name, _ in biases]
        target_t = resolve_target(target_t, logits)
        maps: dict[str, torch.Tensor] = {}
        layer_maps: dict[str, dict[str, torch.Tensor]] = {}
        if "eigencam" in methods:
            per_layer = eigen_maps([a.detach() for a in acts], size)
            maps["eigencam"] = fuse_layer_maps(per_layer, size)[:, 0]
            layer_maps["eigencam"] = {name: m[:, 0] for (name, _), m in zip(self.layers, per_layer)}
        if methods & set(PERTURBATION_CAMS):  # their batches start from these activations
            layer_maps["__activations__"] = {name: a.detach().clone() for (name, _), a in zip(layers, acts)}
        if not rules:
            return logits.clone(), target_t, maps, layer_maps  # (clone: a normal tensor outside inference mode)
        with torch.enable_grad():
            score = logits.gather(1, target_t[:, None])[:, 0].sum()
        gradcam_at_input = None
        for i, rule in enumerate(rules):
            if switch is not None:
                switch.rule = rule
            if rule == "plain":
                wrt = [*(acts if layer_grads else []), *bias_acts, *([xin] if input_grad_wanted else [])]
            else:
                wrt = [xin]
            grads = list(torch.autograd.grad(score, wrt, retain_graph=i < len(rules) - 1, allow_unused=fullgrad))
            grads = [torch.zeros_like(t) if g is None else g for t, g in zip(wrt, grads)]
            if rule == "plain":
                input_grad = grads.pop() if input_grad_wanted else None
                if saliency:
                    maps["saliency"] = ops.saliency_reduce(input_grad)
                if "input-x-gradient" in methods:
                    maps["input-x-gradient"] = x * input_grad
                if fullgrad:
                    maps["fullgrad"] = self._fullgrad_map(x, input_grad, biases, grads[len(grads) - len(biases):],
                                                          size)
                    grads = grads[: len(grads) - len(biases)]
                if "eigengradcam" in methods:
                    per_layer = eigen_grad_maps([a.detach() for a in acts], grads, size)
                    maps["eigengradcam"] = fuse_layer_maps(per_layer, size)[:, 0]
                    layer_maps["eigengradcam"] = {name: m[:, 0] for (name, _), m in zip(self.layers, per_layer)}
                for variant in variants:
                    fused, per_layer = gradcam_maps(acts, grads, variant, size)
                    maps[variant] = fused[:, 0]
                    layer_maps[variant] = {name: m[:, 0] for (name, _), m in zip(self.layers, per_layer)}
                    if variant == "gradcam":
                        gradcam_at_input = fused
                if "guided-gradcam" in self.methods and size != tuple(x.shape[-2:]):
                    gradcam_at_input, _ = gradcam_maps(acts, grads, "gradcam", tuple(x.shape[-2:]))
            elif rule == "guided":
                if "guided-backprop" in self.methods:
                    maps["guided-backprop"] = grads[0]
                if "guided-gradcam" in self.methods:
                    maps["guided-gradcam"] = grads[0] * gradcam_at_input
            else:
                maps["deconvnet"] = grads[0]
        for variant in variants:
            if variant not in self.methods:  # Grad-CAM computed only for guided Grad-CAM
                del maps[variant], layer_maps[variant]
        return logits.detach(), target_t, maps, layer_maps

    @staticmethod
    def _fullgrad_map(x: torch.Tensor, input_grad: torch.Tensor, biases: list, grads: list, size) -> torch.Tensor:
        """FullGrad's (N, H, W) map, as `interp_ext.FullGrad` computes it."""
        size = size or tuple(x.shape[-2:])
        inp, per_layer = fullgrad_terms(x, input_grad, biases, grads)
        total = resize_maps(inp.sum(1, keepdim=True), size)
        if per_layer:
            total = total + sum_resized(per_layer, size)
        return unit_scale(total)[:, 0]

    def _perturbation_cam_pass(self, kind: str, x: torch.Tensor, target_t: torch.Tensor, size, logits: torch.Tensor,
                               acts: list[torch.Tensor], model: nn.Module, layers: list):
        """ScoreCAM / AblationCAM from the forward's activations: (fused map, per-layer maps),
        the numbers `interp_ext.ScoreCAM` / `AblationCAM` give."""
        batch = self.options[kind]["batch_size"]
        score = copy_scores(None, target_t)
        per_layer = []
        for layer, a in zip(layers, acts):
            if kind == "scorecam":
                forward = TunedForward(model, kind) if self.tune else model
                w = torch.softmax(masked_input_scores(forward, x, a, score, batch_size=batch), dim=1)
            else:
                with torch.inference_mode():
                    base = score(logits, torch.arange(x.shape[0], device=x.device)).float()
                w = ablation_weights(base, ablation_scores(model, layer, x, a, base, score, batch_size=batch))
            with torch.inference_mode():
                per_layer.append(weighted_map(a, w, True, size, True))
        with torch.inference_mode():
            fused = fuse_layer_maps(per_layer, size)[:, 0].clone()
        return fused, {name: m[:, 0].clone() for (name, _), m in zip(self.layers, per_layer)}

    def _perturbation_pass(self, kind: str, x: torch.Tensor, target_t: torch.Tensor, model: nn.Module) -> torch.Tensor:
        o = self.options[kind]
        if kind == "smoothgrad":
            method = SmoothGrad(Saliency(model), n_samples=o["n_samples"], stdev=o["stdev"],
                                batch_size=o["batch_size"], seed=o["seed"])
            return ops.saliency_reduce(method.noisy_mean(x, target_t, abs=True))
        if kind == "integrated-gradients":
            return IntegratedGradients(model).attribute(x, target=target_t, baselines=o["baseline"], n_steps=o["n_steps"],
                                                        method=o["method"], batch_size=o["batch_size"])
        model = TunedForward(model, kind) if self.tune else model
        if kind == "occlusion":
            return Occlusion(model).attribute(x, tuple(o["window"]), tuple(o["strides"]), baselines=o["baseline"],
                                                   target=target_t, perturbations_per_eval=o["perturbations_per_eval"])
        mask = grid_feature_mask(x.shape[2], x.shape[3], o["patch"])
        return ShapleySampling(model).attribute(x, mask, baselines=o["baseline"], n_samples=o["n_samples"],
                                                     target=target_t, perturbations_per_eval=o["perturbations_per_eval"],
                                                     seed=o["seed"])
