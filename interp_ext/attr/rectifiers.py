"""Route every spelling of a rectifier to the native guided op while a model runs.

Hook-based libraries catch only ``nn.ReLU`` modules. A TorchFunctionMode sees the
calls themselves, so ``F.relu``, ``torch.relu_``, ``Tensor.relu``, reused and in-place
modules, ``nn.ReLU6`` / ``F.relu6`` and ``hardtanh(0, u)`` are all covered, and the
model is never modified: leaving the ``with`` block (also by an exception) restores
everything.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .. import ops


def _rectify(rule: str, x: torch.Tensor, upper: Optional[float], inplace: bool) -> torch.Tensor:
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
    ("guided" or "deconvnet"); their forward values are unchanged."""

    def __init__(self, rule: str = "guided"):
        super().__init__()
        if rule not in ("guided", "deconvnet"):
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
