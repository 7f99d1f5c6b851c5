"""Thin typed wrappers over ``torch.ops.interp_ext.*`` plus their autograd registration.

Every function here only normalises arguments; the checks and the work happen in the
native kernels (CPU or CUDA, picked by the dispatcher from the tensors' device).
"""
from __future__ import annotations

from typing import Literal, Optional

import torch

Rule = Literal["guided", "deconvnet"]

_ops = torch.ops.interp_ext


def guided_relu(x: torch.Tensor, upper: Optional[float] = None, rule: Rule = "guided") -> torch.Tensor:
    """Rectifier whose backward is the guided-backprop (or deconvnet) rule.

    Forward: ``relu(x)``, or ``clamp(x, 0, upper)`` (ReLU6 is ``upper=6``).
    Backward, for an incoming gradient ``g``:

    - ``rule="guided"``: ``g * (0 < x < upper) * (g > 0)`` (Springenberg et al.);
    - ``rule="deconvnet"``: ``g * (g > 0)`` (Zeiler & Fergus), ignoring ``x``.

    Differentiable once (the backward is the native ``guided_relu_backward``).
    """
    return _ops.guided_relu.default(x, _as_upper(upper), rule)


def guided_relu_(x: torch.Tensor, upper: Optional[float] = None, rule: Rule = "guided") -> torch.Tensor:
    """In-place :func:`guided_relu`: rectifies ``x`` itself and returns it. Autograd
    records it like ``relu_`` (no extra copies); the backward is the same rule."""
    _ops.guided_relu_.default(x, _as_upper(upper), rule)
    return x


def guided_relu_backward(
    grad_output: torch.Tensor,
    x: torch.Tensor,
    upper: Optional[float] = None,
    rule: Rule = "guided",
    *,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The backward of :func:`guided_relu` as a standalone op.

    ``x`` may be the forward input or the forward output (the mask is the same).
    Pass ``out=`` to write into a buffer you reuse (it may be ``grad_output`` itself,
    for an in-place update); it must have ``grad_output``'s shape, dtype and device.
    """
    if out is None:
        return _ops.guided_relu_backward.default(grad_output, x, _as_upper(upper), rule)
    _ops.guided_relu_backward.out(grad_output, x, _as_upper(upper), rule, out=out)
    return out


def saliency_reduce(grad: torch.Tensor) -> torch.Tensor:
    """Simonyan et al. saliency map: ``max_c |grad[:, c]|``, ``(N, C, H, W) -> (N, H, W)``.

    Inference only: no autograd.
    """
    return _ops.saliency_reduce.default(grad)


def _as_upper(upper: Optional[float]) -> Optional[float]:
    if upper is None or upper == float("inf"):
        return None
    return float(upper)


# ---- autograd ---------------------------------------------------------------------------


def _guided_relu_setup_context(ctx, inputs, output):
    _, upper, rule = inputs
    # Save the output, not the input: the mask is the same, and a caller that
    # overwrites the input in place (relu_ spellings) does not invalidate it.
    ctx.save_for_backward(output)
    ctx.upper, ctx.rule = upper, rule


def _guided_relu_backward(ctx, grad_output):
    (output,) = ctx.saved_tensors
    return _ops.guided_relu_backward.default(grad_output, output, ctx.upper, ctx.rule), None, None


torch.library.register_autograd(
    "interp_ext::guided_relu", _guided_relu_backward, setup_context=_guided_relu_setup_context
)
