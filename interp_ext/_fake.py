"""Fake (meta) kernels for every op: shapes and the same checks, with the same
messages as the native kernels, so ``torch.compile`` and FakeTensor tracing work."""
from __future__ import annotations

from typing import Optional

import torch

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_floating(op: str, arg: str, t: torch.Tensor) -> None:
    torch._check(
        t.dtype in _FLOATS,
        lambda: f"{op}: {arg} must be a floating-point tensor (float32, float64, float16 or bfloat16), got {t.dtype}",
    )


def _check_rule(op: str, rule: str) -> None:
    torch._check(rule in ("guided", "deconvnet"), lambda: f'{op}: rule must be "guided" or "deconvnet", got "{rule}"')


def _check_upper(op: str, upper: Optional[float]) -> None:
    torch._check(
        upper is None or upper > 0,
        lambda: f"{op}: upper must be positive (the rectifier clamps to [0, upper]), got {upper}",
    )


def _check_backward_args(grad_output: torch.Tensor, x: torch.Tensor, upper, rule) -> None:
    op = "guided_relu_backward"
    _check_floating(op, "grad_output", grad_output)
    _check_floating(op, "x", x)
    torch._check(
        grad_output.shape == x.shape,
        lambda: f"{op}: grad_output and x must have the same shape, got {list(grad_output.shape)} and {list(x.shape)}",
    )
    torch._check(
        grad_output.dtype == x.dtype,
        lambda: f"{op}: grad_output and x must have the same dtype, got {grad_output.dtype} and {x.dtype}",
    )
    _check_rule(op, rule)
    _check_upper(op, upper)


@torch.library.register_fake("interp_ext::guided_relu")
def _guided_relu_fake(x, upper=None, rule="guided"):
    _check_floating("guided_relu", "x", x)
    _check_rule("guided_relu", rule)
    _check_upper("guided_relu", upper)
    return torch.empty_like(x)


@torch.library.register_fake("interp_ext::guided_relu_")
def _guided_relu_inplace_fake(x, upper=None, rule="guided"):
    _check_floating("guided_relu_", "x", x)
    _check_rule("guided_relu_", rule)
    _check_upper("guided_relu_", upper)


@torch.library.register_fake("interp_ext::guided_relu_backward")
def _guided_relu_backward_fake(grad_output, x, upper=None, rule="guided"):
    _check_backward_args(grad_output, x, upper, rule)
    return torch.empty_like(grad_output, memory_format=torch.contiguous_format)


@torch.library.register_fake("interp_ext::guided_relu_backward.out")
def _guided_relu_backward_out_fake(grad_output, x, upper=None, rule="guided", *, out):
    _check_backward_args(grad_output, x, upper, rule)
    torch._check(
        out.shape == grad_output.shape,
        lambda: f"guided_relu_backward: out must have shape {list(grad_output.shape)}, got {list(out.shape)}",
    )
    torch._check(
        out.dtype == grad_output.dtype,
        lambda: f"guided_relu_backward: out must have dtype {grad_output.dtype}, got {out.dtype}",
    )


@torch.library.register_fake("interp_ext::saliency_reduce")
def _saliency_reduce_fake(grad):
    _check_floating("saliency_reduce", "grad", grad)
    torch._check(grad.dim() == 4, lambda: f"saliency_reduce: grad must be 4-D (N, C, H, W), got shape {list(grad.shape)}")
    torch._check(
        grad.shape[1] > 0, lambda: f"saliency_reduce: grad must have at least one channel, got shape {list(grad.shape)}"
    )
    return grad.new_empty((grad.shape[0], grad.shape[2], grad.shape[3]))
