"""Route every spelling of a rectifier to the native guided op while a model runs.

Hook-based libraries catch only ``nn.ReLU`` modules. A TorchFunctionMode sees the
calls themselves, so ``F.relu``, ``torch.relu_``, ``Tensor.relu``, reused and in-place
modules, ``nn.ReLU6`` / ``F.relu6`` and ``hardtanh(0, u)`` are all covered, and the
model is never modified: leaving the ``with`` block (also by an exception) restores
everything.

With a `BackwardRule` instead of a fixed rule, one forward pass serves several
backward passes: each rectifier reads the rule when the gradient reaches it, so
``"plain"`` (the ordinary ReLU gradient: saliency, Grad-CAM), ``"guided"`` and
``"deconvnet"`` backward passes can follow one forward (``retain_graph=True``).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .. import ops


RULES = ("guided", "deconvnet")


class BackwardRule:
    """The rule rectifiers recorded under ``RectifierMode(BackwardRule())`` apply when a
    backward pass reaches them: set ``.rule`` to "plain", "guided" or "deconvnet" before
    each ``torch.autograd.grad``."""

    def __init__(self, rule: str = "plain"):
        self.rule = rule

    @property
    def rule(self) -> str:
        """The current rule: "plain", "guided" or "deconvnet"; setting anything else is a
        ``ValueError``."""
        return self._rule

    @rule.setter
    def rule(self, rule: str) -> None:
        if rule not in ("plain", *RULES):
            raise ValueError(f'rule must be "plain", "guided" or "deconvnet", got {rule!r}')
        self._rule = rule


@functools.lru_cache(maxsize=64)  # read by every rectifier node in every plain backward pass
def _plain_bound(upper: float, dtype: torch.dtype) -> float:
    """upper as the forward's clamp leaves it in `dtype` (see kernels/guided_relu.h)."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    return float(torch.tensor(upper, dtype=compute).to(dtype))


class _SwitchableRectifier(torch.autograd.Function):
    """relu / clamp(0, upper) whose backward rule is read from a `BackwardRule` when the
    gradient arrives. A method-level mechanism of `RectifierMode` (like the mode itself,
    not meant for torch.compile): the kernels it calls are the registered ops."""

    @staticmethod
    def forward(ctx, x, upper, switch, inplace):
        if inplace:
            ops.guided_relu_(x, upper)
            ctx.mark_dirty(x)
            y = x
        else:
            y = ops.guided_relu(x, upper)
        ctx.save_for_backward(y)  # the output gives the same mask as the input
        ctx.upper, ctx.switch = upper, switch
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        rule = ctx.switch.rule
        if rule != "plain":
            return ops.guided_relu_backward(grad, y, ctx.upper, rule), None, None, None
        # the ordinary gradient, as autograd's own threshold / hardtanh backward gives it
        if ctx.upper is None:
            return torch.ops.aten.threshold_backward(grad, y, 0.0), None, None, None
        return torch.ops.aten.hardtanh_backward(grad, y, 0.0, _plain_bound(ctx.upper, y.dtype)), None, None, None


def _rectify(rule: Union[str, BackwardRule], x: torch.Tensor, upper: Optional[float], inplace: bool) -> torch.Tensor:
    if isinstance(rule, BackwardRule):
        return _SwitchableRectifier.apply(x, upper, rule, inplace)
    # In-place spellings must leave the result in `x` for code that ignores the
    # return value, and cost no extra memory pass.
    return ops.guided_relu_(x, upper, rule) if inplace else ops.guided_relu(x, upper, rule)


def _hardtanh_upper(min_val: float, max_val: float) -> Optional[float]:
    """hardtanh(min=0, max=u) is a rectifier clamped at u; other bounds are not."""
    return float(max_val) if min_val == 0 and max_val > 0 else None


def _relu(rule, input, inplace=False):
    return _rectify(rule, input, None, inplace)


def _relu6(rule, input, inplace=False):
    return _rectify(rule, input, 6.0, inplace)


def _hardtanh(rule, input, min_val=-1.0, max_val=1.0, inplace=False):
    upper = _hardtanh_upper(min_val, max_val)
    if upper is None:
        return NotImplemented
    return _rectify(rule, input, upper, inplace)


def _hardtanh_(rule, input, min_val=-1.0, max_val=1.0):
    return _hardtanh(rule, input, min_val, max_val, inplace=True)


_HANDLERS: dict[Callable, Callable[..., Any]] = {
    F.relu: _relu,
    F.relu_: lambda rule, input: _relu(rule, input, True),
    torch.relu: _relu,
    torch.relu_: lambda rule, input: _relu(rule, input, True),
    torch.Tensor.relu: _relu,
    torch.Tensor.relu_: lambda rule, input: _relu(rule, input, True),
    F.relu6: _relu6,
    F.hardtanh: _hardtanh,
    F.hardtanh_: _hardtanh_,
}


class RectifierMode(TorchFunctionMode):
    """Within ``with RectifierMode(rule):`` rectifiers backpropagate by ``rule``
    ("guided" or "deconvnet", or a `BackwardRule` chosen per backward pass); their
    forward values are unchanged."""

    def __init__(self, rule: Union[str, BackwardRule] = "guided"):
        super().__init__()
        if not isinstance(rule, BackwardRule) and rule not in RULES:
            raise ValueError(f'rule must be "guided" or "deconvnet", got {rule!r}')
        self.rule = rule

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = _HANDLERS.get(func)
        if handler is not None and args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
            result = handler(self.rule, *args, **kwargs)
            if result is not NotImplemented:
                return result
        return func(*args, **kwargs)
