"""Pure-PyTorch versions of every native op: the test oracle and the benchmark baseline.

Written for clarity, not speed; each mirrors the definition in the op's docstring.
"""
from __future__ import annotations

from typing import Optional

import torch


def guided_relu_backward(
    grad_output: torch.Tensor, x: torch.Tensor, upper: Optional[float] = None, rule: str = "guided"
) -> torch.Tensor:
    """``g * (0 < x < upper) * (g > 0)`` (guided) or ``g * (g > 0)`` (deconvnet)."""
    g = grad_output
    if rule == "deconvnet":
        return g * (g > 0)
    active = x > 0
    if upper is not None:
        active = active & (x < upper)
    return g * active * (g > 0)


def guided_relu_backward_where(grad_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The same guided rule spelled with ``torch.where`` (a benchmark baseline)."""
    return torch.where((x > 0) & (grad_output > 0), grad_output, torch.zeros_like(grad_output))


def saliency_reduce(grad: torch.Tensor) -> torch.Tensor:
    """Simonyan et al.: ``max_c |grad|`` over the channel dimension of (N, C, H, W)."""
    return grad.abs().amax(dim=1)
