"""Gradient methods: saliency (Simonyan et al.), input x gradient, integrated gradients
(Sundararajan et al.), guided backprop (Springenberg et al.) and deconvnet (Zeiler &
Fergus)."""
from __future__ import annotations

import functools
from typing import Optional, Union

import torch
from torch import nn

from .. import ops
from ._common import (Target, check_inputs, in_eval_mode, input_gradients, model_output, normalize_target,
                      resolve_target)
from .rectifiers import RectifierMode

RIEMANN_METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
INTEGRATION_METHODS = (*RIEMANN_METHODS, "gausslegendre")


class Saliency:
    """Gradient of the target score with respect to the input.

    The model runs in eval mode (BatchNorm's running statistics, no Dropout); a model in
    train mode gets every module's ``training`` flag back afterwards, also on an error.
    Inputs must be finite and in the model's dtype; the model must return one tensor.
    """

    def __init__(self, model: nn.Module):
        self.model = model

    def attribute(self, inputs: torch.Tensor, target: Target = None, abs: bool = True) -> torch.Tensor:
        """Input-shaped gradients (their absolute value when ``abs``) for a batch.

        ``target``: None (each sample's top-1 class), an int, or one class per sample.
        """
        grad, _ = input_gradients(self.model, inputs, target)
        return grad.abs() if abs else grad

    def saliency_map(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        """The Simonyan et al. map: ``max_c |gradient|``, shape ``(N, H, W)``."""
        check_inputs(inputs, min_dim=4, model=self.model)
        if inputs.dim() != 4:
            raise ValueError(f"inputs must be images (N, C, H, W), got shape {tuple(inputs.shape)}")
        grad, _ = input_gradients(self.model, inputs, target)
        return ops.saliency_reduce(grad)


class _RectifierRuleMethod:
    rule: str

    def __init__(self, model: nn.Module):
        self.model = model

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        """Input-shaped attributions for a batch.

        ``target``: None (each sample's top-1 class), an int, or one class per sample.
        The model is not modified; rectifiers are rerouted only during the forward, which
        runs in eval mode (every module's flag restored afterwards).
        """
        grad, _ = input_gradients(self.model, inputs, target, RectifierMode(self.rule))
        return grad


class GuidedBackprop(_RectifierRuleMethod):
    """Guided backpropagation: at every rectifier pass only positive gradients of
    active units. Works for every spelling of ReLU and ReLU6 (see ``RectifierMode``)."""

    rule = "guided"


class Deconvolution(_RectifierRuleMethod):
    """Zeiler & Fergus deconvnet: at every rectifier, rectify the gradient itself."""

    rule = "deconvnet"


class InputXGradient:
    """The input times the gradient of the target score with respect to it. The model runs
    in eval mode (every module's flag restored afterwards)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        """Input-shaped attributions; ``target`` as :meth:`Saliency.attribute`."""
        grad, _ = input_gradients(self.model, inputs, target)
        return inputs.detach() * grad


@functools.lru_cache(maxsize=64)
def integration_points(method: str, n_steps: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The quadrature of integrated gradients over [0, 1]: (weights, points).

    Riemann rules: ``n_steps`` equal steps (the trapezoid halves the two end weights),
    points from ``torch.linspace`` in float32 (Captum's numbers); ``"gausslegendre"``: the
    ``n_steps``-point Gauss-Legendre rule mapped to [0, 1] (cached: NumPy takes ~0.1 s for
    500 points)."""
    if method not in INTEGRATION_METHODS:
        raise ValueError(f"method must be one of {', '.join(INTEGRATION_METHODS)}, got {method!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int):
        raise ValueError(f"n_steps must be an int, got {n_steps!r}")
    if method in RIEMANN_METHODS:
        if n_steps < 2:
            raise ValueError(f"n_steps must be at least 2 for method={method!r}, got {n_steps}")
        steps = [1.0 / n_steps] * n_steps
        kind = method.split("_")[1]
        if kind == "trapezoid":
            steps[0] /= 2
            steps[-1] /= 2
            alphas = torch.linspace(0, 1, n_steps)
        elif kind == "left":
            alphas = torch.linspace(0, 1 - 1 / n_steps, n_steps)
        elif kind == "middle":
            alphas = torch.linspace(1 / (2 * n_steps), 1 - 1 / (2 * n_steps), n_steps)
        else:
            alphas = torch.linspace(1 / n_steps, 1, n_steps)
        return tuple(steps), tuple(alphas.tolist())
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1 for method='gausslegendre', got {n_steps}")
    import numpy as np

    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    return tuple((0.5 * weights).tolist()), tuple((0.5 * (1 + nodes)).tolist())


class IntegratedGradients:
    """Integrated gradients (Sundararajan et al.): ``(x - baseline)`` times the gradient
    integrated along the straight path from the baseline to ``x``, by quadrature. The
    model runs in eval mode (every module's flag restored afterwards)."""

    def __init__(self, model: nn.Module):
        self.model = model

    @in_eval_mode
    def attribute(self, inputs: torch.Tensor, target: Target = None, baselines: Union[float, torch.Tensor] = 0.0,
                  n_steps: int = 50, method: str = "gausslegendre", batch_size: Optional[int] = None,
                  return_delta: bool = False):
        """Input-shaped attributions for a batch (and, with ``return_delta``, the
        completeness error per sample, ``sum(attribution) - (score(x) - score(baseline))``).

        ``target``: None (each sample's top-1 class), an int, or one class per sample.
        ``baselines``: a number or a tensor broadcastable to the inputs. ``method``: one
        of :data:`INTEGRATION_METHODS` with ``n_steps`` points. ``batch_size``: path
        points of the whole batch per model call (the memory bound; default all of them).
        """
        check_inputs(inputs, model=self.model)
        weights, alphas = integration_points(method, n_steps)
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be None or a positive int, got {batch_size!r}")
        x = inputs.detach()
        if isinstance(baselines, torch.Tensor):
            try:
                base = baselines.detach().to(x).expand_as(x)
            except RuntimeError:
                raise ValueError(f"baselines must broadcast to the inputs' shape {tuple(x.shape)}, "
                                 f"got {tuple(baselines.shape)}") from None
        elif isinstance(baselines, (int, float)) and not isinstance(baselines, bool):
            base = torch.full_like(x, float(baselines))
        else:
            raise TypeError(f"baselines must be a number or a tensor, got {type(baselines).__name__}")
        n = x.shape[0]
        target_t = normalize_target(target, n, x.device)
        if target_t is None:
            with torch.no_grad():
                target_t = resolve_target(None, model_output(self.model(x)))
        per_call = max(1, (batch_size or n * len(alphas)) // n)
        diff = x - base
        total = torch.zeros_like(x)
        for lo in range(0, len(alphas), per_call):
            a = torch.tensor(alphas[lo : lo + per_call], dtype=x.dtype, device=x.device)
            w = torch.tensor(weights[lo : lo + per_call], dtype=x.dtype, device=x.device)
            k = a.shape[0]
            shape = (k,) + (1,) * x.dim()
            path = (base + a.view(shape) * diff).reshape(k * n, *x.shape[1:]).requires_grad_(True)
            with torch.enable_grad():
                out = model_output(self.model(path))
                idx = resolve_target(target_t, out) if lo == 0 else target_t
                score = out.gather(1, idx.repeat(k)[:, None]).sum()
            (grad,) = torch.autograd.grad(score, path)
            total += (grad.view(k, *x.shape) * w.view(shape)).sum(0)
        attributions = total * diff
        if not return_delta:
            return attributions
        with torch.no_grad():
            ends = model_output(self.model(torch.cat([x, base])))
            gain = ends[:n].gather(1, target_t[:, None])[:, 0] - ends[n:].gather(1, target_t[:, None])[:, 0]
        return attributions, attributions.flatten(1).sum(1) - gain
