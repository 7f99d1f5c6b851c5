"""Captum's gradient methods: ``Saliency``, ``InputXGradient``, ``IntegratedGradients``,
``GuidedBackprop``, ``Deconvolution``, ``NeuronGuidedBackprop``, ``NeuronDeconvolution``,
``LayerGradCam``, ``GuidedGradCam`` and ``LayerAttribution.interpolate``.

Paths: autograd asks for the gradients the method needs only (input gradients, or the
layer's for Grad-CAM, where nothing before the layer is recorded); the guided and
deconvnet rectifiers are interp_ext's (`interp_ext.attr.rectifiers.RectifierMode`: the
native ``guided_relu`` kernels, every spelling of a rectifier); the Grad-CAM reduction of
4-D layers is the native ``gradcam`` op; Guided Grad-CAM shares one forward between its
Grad-CAM and guided backward passes.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ... import ops
from ...attr.gradient import INTEGRATION_METHODS as METHODS
from ...attr.gradient import integration_points
from ...attr.rectifiers import BackwardRule, RectifierMode
from ._common import (
    Attribution,
    Baselines,
    CaptumArgumentError,
    CaptumTypeError,
    GradientAttribution,
    TargetType,
    TensorOrTuple,
    args_tuple,
    baselines_tuple,
    call_forward,
    check_baselines_like_inputs,
    check_differentiable,
    check_one_score_per_sample,
    check_target,
    expand_args,
    expand_target,
    format_output,
    forward_scores,
    input_tuple,
    public,
)

_RECTIFIER_NOTE = (
    "Every spelling of a rectifier is rerouted during the forward (interp_ext's RectifierMode: ``nn.ReLU``, reused and "
    "in-place modules, ``F.relu``, ``torch.relu_``, ``Tensor.relu``, ``nn.ReLU6`` / ``F.relu6``, ``hardtanh(0, u)``), "
    "where Captum's module hooks catch ``nn.ReLU`` modules only: for a model that rectifies with ``F.relu`` or ReLU6 the "
    "maps differ from Captum's on purpose (Captum's pass plain gradients through those).")


def _leaves(xs: Sequence[Tensor]) -> tuple[Tensor, ...]:
    return tuple(x.detach().requires_grad_(True) for x in xs)


def input_gradients(forward_func: Callable, xs: Sequence[Tensor], target: TargetType, args: Optional[tuple],
                    context: Optional[contextlib.AbstractContextManager] = None) -> tuple[Tensor, ...]:
    """d(selected output, summed over samples) / d inputs, for each input tensor (Captum's
    ``compute_gradients``). Only the input gradients are computed; parameters' ``.grad``
    and the caller's tensors are untouched."""
    check_differentiable(xs)
    leaves = _leaves(xs)
    with torch.enable_grad(), (context or contextlib.nullcontext()):
        out = forward_scores(forward_func, leaves, target, args)
    check_one_score_per_sample(out)
    return torch.autograd.grad(out, leaves, grad_outputs=torch.ones_like(out))


class Saliency(GradientAttribution):
    """Captum's ``Saliency``: the gradient of the target output with respect to each input
    (its absolute value with ``abs=True``, the default)."""

    @public
    def attribute(self, inputs: TensorOrTuple, target: TargetType = None, abs: bool = True,
                  additional_forward_args: Any = None) -> TensorOrTuple:
        """Gradients of the target output with respect to ``inputs`` (a tensor or a tuple
        of tensors, batch first, floating point), absolute values with ``abs``; one
        tensor per input, each of its input's shape (a tuple for a tuple). ``target`` and
        ``additional_forward_args`` as in Captum."""
        xs, is_tuple = input_tuple(inputs)
        check_target(target, xs[0].shape[0])
        grads = input_gradients(self.forward_func, xs, target, args_tuple(additional_forward_args))
        return format_output(is_tuple, [g.abs() if abs else g for g in grads])


class InputXGradient(GradientAttribution):
    """Captum's ``InputXGradient``: input times the gradient of the target output."""

    @property
    def multiplies_by_inputs(self) -> bool:
        """True: the gradients are multiplied by the inputs."""
        return True

    @public
    def attribute(self, inputs: TensorOrTuple, target: TargetType = None,
                  additional_forward_args: Any = None) -> TensorOrTuple:
        """``inputs * d target / d inputs`` for a tensor or a tuple of tensors (batch first,
        floating point): one tensor per input, of its shape. Arguments as Captum's."""
        xs, is_tuple = input_tuple(inputs)
        check_target(target, xs[0].shape[0])
        grads = input_gradients(self.forward_func, xs, target, args_tuple(additional_forward_args))
        return format_output(is_tuple, [x * g for x, g in zip(xs, grads)])


def step_sizes_and_alphas(method: str, n_steps: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """interp_ext's quadrature (`interp_ext.attr.gradient.integration_points`, Captum's
    numbers), its errors as Captum's type."""
    try:
        return integration_points(method, n_steps)
    except ValueError as e:
        raise CaptumArgumentError(str(e)) from None


class IntegratedGradients(GradientAttribution):
    """Captum's ``IntegratedGradients`` (Sundararajan et al.): the path integral of the
    gradients from the baseline to the input, times ``input - baseline`` (unless
    ``multiply_by_inputs=False``), by ``method`` (``"riemann_left"``, ``"riemann_right"``,
    ``"riemann_middle"``, ``"riemann_trapezoid"`` or ``"gausslegendre"``, the default) with
    ``n_steps`` points, all points in one batch or ``internal_batch_size`` rows at a time;
    ``return_convergence_delta=True`` also gives the completeness error per sample."""

    def __init__(self, forward_func: Callable, multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func)
        self._multiply_by_inputs = multiply_by_inputs

    @property
    def multiplies_by_inputs(self) -> bool:
        """``multiply_by_inputs`` as given: whether the integral is multiplied by
        ``inputs - baselines``."""
        return self._multiply_by_inputs

    def has_convergence_delta(self) -> bool:
        """True: ``return_convergence_delta=True`` also returns the completeness error."""
        return True

    @public
    def attribute(self, inputs: TensorOrTuple, baselines: Baselines = None, target: TargetType = None,
                  additional_forward_args: Any = None, n_steps: int = 50, method: str = "gausslegendre",
                  internal_batch_size: Optional[int] = None, return_convergence_delta: bool = False):
        """Integrated gradients of a tensor or a tuple of tensors (batch first, floating
        point): one tensor per input, of its shape; with ``return_convergence_delta`` the
        pair ``(attributions, delta)``, ``delta`` (N,) as `compute_convergence_delta`.

        ``baselines``: None (zeros), a number, or a tensor of the input's shape or with a
        batch of 1 (a tuple: one per input). ``n_steps`` points of ``method``;
        ``internal_batch_size``: at most that many rows per forward (at least one point of
        every sample, with a warning when smaller than the batch). Bad values raise
        `CaptumArgumentError` naming the argument."""
        xs, is_tuple = input_tuple(inputs)
        bases = baselines_tuple(baselines, xs)
        check_baselines_like_inputs(xs, bases)
        if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 0:
            raise CaptumArgumentError(f"n_steps must be a non-negative int, got {n_steps!r}")
        if method not in METHODS:
            raise CaptumArgumentError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if internal_batch_size is not None and (not isinstance(internal_batch_size, int)
                                                or isinstance(internal_batch_size, bool) or internal_batch_size < 1):
            raise CaptumArgumentError(f"internal_batch_size must be None or an int >= 1, got {internal_batch_size!r}")
        check_differentiable(xs)
        n = xs[0].shape[0]
        check_target(target, n)
        args = args_tuple(additional_forward_args)
        steps, alphas = step_sizes_and_alphas(method, n_steps)
        if internal_batch_size is None:
            attrs = self._integrate(xs, bases, target, args, steps, alphas)
        else:
            if internal_batch_size < n:
                warnings.warn(f"internal_batch_size {internal_batch_size} is less than the number of examples {n}: "
                              f"using {n} (one integration point of every example per forward)", stacklevel=2)
            per_chunk = max(1, internal_batch_size // n)
            attrs = None
            for lo in range(0, n_steps, per_chunk):
                part = self._integrate(xs, bases, target, args, steps[lo : lo + per_chunk], alphas[lo : lo + per_chunk])
                attrs = part if attrs is None else tuple(a + p.detach() for a, p in zip(attrs, part))
        result = format_output(is_tuple, attrs)
        if return_convergence_delta:
            delta = self.compute_convergence_delta(attrs, baselines, inputs, target=target,
                                                   additional_forward_args=additional_forward_args)
            return result, delta
        return result

    def _integrate(self, xs, bases, target, args, steps: Sequence[float], alphas: Sequence[float]) -> tuple[Tensor, ...]:
        k = len(alphas)
        scaled = []
        for x, b in zip(xs, bases):
            a = torch.tensor(alphas, dtype=x.dtype, device=x.device).view(k, *([1] * x.dim()))
            path = b + a * (x - b)  # (k, N, ...): the k points of every sample, point-major as Captum's
            scaled.append(path.reshape(k * x.shape[0], *path.shape[2:]))
        grads = input_gradients(self.forward_func, scaled, expand_target(target, k), expand_args(args, k))
        weights = torch.tensor(steps).float()
        attrs = []
        for x, b, g in zip(xs, bases, grads):
            total = (g.contiguous().view(k, -1) * weights.to(g.device).view(k, 1)).view(k, *x.shape).sum(0)
            attrs.append(total * (x - b) if self._multiply_by_inputs else total)
        return tuple(attrs)


class _RectifierAttribution(GradientAttribution):
    rule: str

    def __init__(self, model: Callable) -> None:
        super().__init__(model)
        self.model = model

    @public
    def attribute(self, inputs: TensorOrTuple, target: TargetType = None,
                  additional_forward_args: Any = None) -> TensorOrTuple:
        """The gradient of the target output with respect to ``inputs`` (a tensor or a
        tuple of tensors, batch first, floating point) with every rectifier's backward
        replaced by the class's rule: one tensor per input, of its shape."""
        xs, is_tuple = input_tuple(inputs)
        check_target(target, xs[0].shape[0])
        grads = input_gradients(self.forward_func, xs, target, args_tuple(additional_forward_args),
                                RectifierMode(self.rule))
        return format_output(is_tuple, grads)


class GuidedBackprop(_RectifierAttribution):
    __doc__ = ("Captum's ``GuidedBackprop`` (Springenberg et al.): at every rectifier only positive gradients of active "
               "units pass; through interp_ext's native guided rectifier. " + _RECTIFIER_NOTE)
    rule = "guided"


class Deconvolution(_RectifierAttribution):
    __doc__ = ("Captum's ``Deconvolution`` (Zeiler & Fergus): at every rectifier the gradient itself is rectified; "
               "through interp_ext's native deconvnet rectifier. " + _RECTIFIER_NOTE)
    rule = "deconvnet"


# ---- layers ---------------------------------------------------------------------------


class _LayerTap:
    """Forward hook (or pre-hook, for the layer's input) that keeps the layer's tensors of
    its last call and hands clones to the rest of the model, so in-place operations after
    the layer cannot overwrite them (Captum's layer hooks do the same).

    ``start_autograd``: the forward runs under ``torch.no_grad()``; at the layer its
    tensors become leaves that require grad and autograd switches on, so only the part of
    the model after the layer is recorded (all a gradient to the layer needs)."""

    def __init__(self, layer: nn.Module, to_input: bool, start_autograd: bool = False, arg: str = "layer"):
        if not isinstance(layer, nn.Module):
            raise CaptumTypeError(f"{arg} must be a torch.nn.Module of the model, got {type(layer).__name__}")
        self.layer, self.to_input, self.start_autograd, self.arg = layer, to_input, start_autograd, arg
        self.saved: Optional[tuple[Tensor, ...]] = None
        self._handle = None

    def __enter__(self) -> "_LayerTap":
        if self.to_input:
            self._handle = self.layer.register_forward_pre_hook(lambda m, args: self._take(args, True))
        else:
            self._handle = self.layer.register_forward_hook(lambda m, args, out: self._take(out, False))
        return self

    def __exit__(self, *exc) -> bool:
        self._handle.remove()
        return False

    def _take(self, value: Any, is_args: bool):
        seq = isinstance(value, (tuple, list))
        tensors = tuple(value) if seq else (value,)
        if not tensors or not all(isinstance(t, Tensor) for t in tensors):
            what = "inputs" if self.to_input else "output"
            raise CaptumTypeError(f"{self.arg}: the layer's {what} must be a tensor or a tuple of tensors, got "
                                  f"{[type(t).__name__ for t in tensors] if seq else type(value).__name__}")
        if self.start_autograd:
            tensors = tuple(t.detach().requires_grad_(t.is_floating_point() or t.is_complex()) for t in tensors)
            torch.set_grad_enabled(True)
        self.saved = tensors
        clones = tuple(t.clone() for t in tensors)
        if is_args or (seq and isinstance(value, tuple)):
            return clones
        return list(clones) if seq else clones[0]

    def tensors(self) -> tuple[Tensor, ...]:
        if self.saved is None:
            raise CaptumArgumentError(f"{self.arg}: the layer did not run during the forward pass (hooks got nothing)")
        return self.saved


def grad_cam_maps(acts: Sequence[Tensor], grads: Sequence[Tensor], relu: bool, dim_summation: bool) -> list[Tensor]:
    """Captum's Grad-CAM reduction: gradients averaged over the dimensions after the
    channel one, times the activations, summed over channels (``dim_summation``), ReLU
    (``relu``). 4-D float layers take the native ``gradcam`` op."""
    out = []
    for a, g in zip(acts, grads):
        a = a.detach()
        if dim_summation and a.dim() == 4 and a.dtype in (torch.float32, torch.float64) and a.numel() and \
                g.dtype == a.dtype:
            out.append(ops.gradcam(a, g, variant="gradcam", relu=relu, output_size=None, normalize=False))
            continue
        w = g.mean(dim=tuple(range(2, g.dim())), keepdim=True) if g.dim() > 2 else g
        m = (w * a).sum(dim=1, keepdim=True) if dim_summation else w * a
        out.append(F.relu(m) if relu else m)
    return out


class LayerAttribution(Attribution):
    """Captum's ``LayerAttribution`` base: attributions to a layer; ``interpolate``."""

    def __init__(self, forward_func: Callable, layer: nn.Module, device_ids: Optional[list[int]] = None) -> None:
        super().__init__(forward_func)
        self.layer = layer
        self.device_ids = device_ids

    @staticmethod
    def interpolate(layer_attribution: Tensor, interpolate_dims: Union[int, tuple[int, ...]],
                    interpolate_mode: str = "nearest") -> Tensor:
        """A layer attribution resized to ``interpolate_dims`` (``F.interpolate``)."""
        return F.interpolate(layer_attribution, interpolate_dims, mode=interpolate_mode)


class LayerGradCam(LayerAttribution, GradientAttribution):
    """Captum's ``LayerGradCam``: the layer's activations weighted by the spatial mean of
    the target's gradients with respect to them, summed over channels (per channel with
    ``attr_dim_summation=False``), ReLU with ``relu_attributions=True``. Returns the
    layer-resolution map(s): a tensor, or a tuple for a layer with several tensors.

    The forward records autograd only from the layer on and the backward stops there (no
    graph before the layer, no weight gradients); 4-D maps come from the native
    ``gradcam`` reduction. ``grad_kwargs`` go to ``torch.autograd.grad``."""

    def __init__(self, forward_func: Callable, layer: nn.Module, device_ids: Optional[list[int]] = None) -> None:
        LayerAttribution.__init__(self, forward_func, layer, device_ids)

    @public
    def attribute(self, inputs: TensorOrTuple, target: TargetType = None, additional_forward_args: Any = None,
                  attribute_to_layer_input: bool = False, relu_attributions: bool = False,
                  attr_dim_summation: bool = True, grad_kwargs: Optional[dict] = None) -> TensorOrTuple:
        """Grad-CAM maps at the layer's resolution for a batch: ``(N, 1, *spatial)`` per
        layer tensor (``(N, C, *spatial)`` with ``attr_dim_summation=False``); a tuple when
        the layer has several tensors. ``attribute_to_layer_input``: the layer's input
        instead of its output. A `CaptumArgumentError` when the target does not depend
        on the layer (unless ``grad_kwargs={"materialize_grads": True}``: zeros)."""
        xs, _ = input_tuple(inputs)
        check_target(target, xs[0].shape[0])
        grad_kwargs = dict(grad_kwargs or {})
        with torch.no_grad(), _LayerTap(self.layer, attribute_to_layer_input, start_autograd=True) as tap:
            out = forward_scores(self.forward_func, xs, target, args_tuple(additional_forward_args))
        acts = tap.tensors()
        check_one_score_per_sample(out)
        if out.requires_grad:
            grads = torch.autograd.grad(out, acts, grad_outputs=torch.ones_like(out), **grad_kwargs)
        elif grad_kwargs.get("materialize_grads"):
            grads = tuple(torch.zeros_like(a) for a in acts)
        else:
            raise CaptumArgumentError("layer: the target output does not depend on the layer's "
                                      f"{'input' if attribute_to_layer_input else 'output'} (pass "
                                      "grad_kwargs={'materialize_grads': True} for zero gradients)")
        maps = grad_cam_maps(acts, grads, relu_attributions, attr_dim_summation)
        return format_output(len(maps) > 1, maps)


class GuidedGradCam(GradientAttribution):
    __doc__ = ("Captum's ``GuidedGradCam``: guided backprop times the layer's Grad-CAM map (ReLU'd), upsampled to each "
               "input's size with ``interpolate_mode`` (an input whose size it cannot take gets an empty tensor and a "
               "warning, as in Captum). One forward serves both backward passes (the Grad-CAM one to the layer, then "
               "the guided one to the inputs). " + _RECTIFIER_NOTE)

    def __init__(self, model: Callable, layer: nn.Module, device_ids: Optional[list[int]] = None) -> None:
        super().__init__(model)
        self.layer = layer
        self.device_ids = device_ids
        self.grad_cam = LayerGradCam(model, layer, device_ids)
        self.guided_backprop = GuidedBackprop(model)

    @public
    def attribute(self, inputs: TensorOrTuple, target: TargetType = None, additional_forward_args: Any = None,
                  interpolate_mode: str = "nearest", attribute_to_layer_input: bool = False) -> TensorOrTuple:
        """Guided Grad-CAM of a tensor or a tuple of tensors (batch first, floating point):
        one tensor per input, of its shape (an empty tensor, with a warning, for an input
        the map cannot be resized to). A layer with several tensors is a
        `CaptumArgumentError`. Arguments as Captum's."""
        xs, is_tuple = input_tuple(inputs)
        check_target(target, xs[0].shape[0])
        check_differentiable(xs)
        leaves = _leaves(xs)
        rule = BackwardRule("plain")
        with torch.enable_grad(), RectifierMode(rule), _LayerTap(self.layer, attribute_to_layer_input) as tap:
            out = forward_scores(self.forward_func, leaves, target, args_tuple(additional_forward_args))
        acts = tap.tensors()
        if len(acts) != 1:
            raise CaptumArgumentError("layer: GuidedGradCam of a layer with several input / output tensors is not "
                                      "supported")
        check_one_score_per_sample(out)
        ones = torch.ones_like(out)
        (layer_grad,) = torch.autograd.grad(out, acts, grad_outputs=ones, retain_graph=True)
        rule.rule = "guided"
        guided = torch.autograd.grad(out, leaves, grad_outputs=ones)
        (cam,) = grad_cam_maps(acts, (layer_grad,), relu=True, dim_summation=True)
        result = []
        for x, g in zip(xs, guided):
            try:
                result.append(g * LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode))
            except Exception:
                warnings.warn("Couldn't appropriately interpolate GradCAM attributions for some input tensors, returning "
                              "empty tensor for corresponding attributions.", stacklevel=2)
                result.append(torch.empty(0))
        return format_output(is_tuple, result)


# ---- neurons --------------------------------------------------------------------------


def select_neuron(tensors: tuple[Tensor, ...], selector: Any) -> Tensor:
    """Captum's neuron selectors: a function of the layer's tensor(s), an int, or a tuple of
    ints and slices indexing the dimensions after the batch one (slices: summed)."""
    if callable(selector):
        picked = selector(tensors if len(tensors) > 1 else tensors[0])
        if not isinstance(picked, Tensor):
            raise CaptumTypeError(f"neuron_selector: the function must return a tensor, got {type(picked).__name__}")
        return picked
    if len(tensors) != 1:
        raise CaptumArgumentError("neuron_selector: the layer has several tensors; give a function that picks the neuron")
    index = (selector,) if isinstance(selector, int) and not isinstance(selector, bool) else selector
    if not isinstance(index, tuple) or not all(
            (isinstance(i, int) and not isinstance(i, bool)) or isinstance(i, slice) for i in index):
        raise CaptumTypeError(f"neuron_selector must be an int, a tuple of ints / slices or a function, got {selector!r}")
    t = tensors[0]
    if len(index) > t.dim() - 1:
        raise CaptumArgumentError(f"neuron_selector {selector!r} indexes {len(index)} dimensions, the layer's output "
                                  f"has shape {tuple(t.shape)}")
    for d, i in enumerate(index):
        if isinstance(i, int) and not -t.shape[d + 1] <= i < t.shape[d + 1]:
            raise CaptumArgumentError(f"neuron_selector {selector!r}: index {i} is out of range for dimension {d + 1} "
                                      f"of the layer's output, shape {tuple(t.shape)}")
    picked = t[(slice(None), *index)]
    if any(isinstance(i, slice) for i in index):
        picked = picked.reshape(picked.shape[0], -1).sum(1)
    return picked


class _NeuronRectifierAttribution(GradientAttribution):
    rule: str

    def __init__(self, model: Callable, layer: nn.Module, device_ids: Optional[list[int]] = None) -> None:
        super().__init__(model)
        self.layer = layer
        self.device_ids = device_ids

    @public
    def attribute(self, inputs: TensorOrTuple, neuron_selector: Any, additional_forward_args: Any = None,
                  attribute_to_neuron_input: bool = False) -> TensorOrTuple:
        """The gradient of the selected neuron of ``layer`` (summed over the batch) with
        respect to ``inputs``, rectifiers backward by the class's rule: one tensor per
        input, of its shape. ``neuron_selector``: an int, a tuple of ints and slices
        (slices summed) indexing the dimensions after the batch, or a function of the
        layer's tensor(s); ``attribute_to_neuron_input``: select from the layer's input."""
        xs, is_tuple = input_tuple(inputs)
        check_differentiable(xs)
        leaves = _leaves(xs)
        with torch.enable_grad(), RectifierMode(self.rule), \
                _LayerTap(self.layer, attribute_to_neuron_input, arg="layer") as tap:
            call_forward(self.forward_func, leaves, args_tuple(additional_forward_args))
            picked = select_neuron(tap.tensors(), neuron_selector)
        grads = torch.autograd.grad(picked, leaves, grad_outputs=torch.ones_like(picked))
        return format_output(is_tuple, grads)


class NeuronGuidedBackprop(_NeuronRectifierAttribution):
    __doc__ = ("Captum's ``NeuronGuidedBackprop``: guided backprop of one neuron (or the sum of a slice of them) of "
               "``layer``, selected by ``neuron_selector``. " + _RECTIFIER_NOTE)
    rule = "guided"


class NeuronDeconvolution(_NeuronRectifierAttribution):
    __doc__ = ("Captum's ``NeuronDeconvolution``: deconvnet backward of one neuron (or a slice) of ``layer``. "
               + _RECTIFIER_NOTE)
    rule = "deconvnet"
