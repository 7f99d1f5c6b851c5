"""Captum's argument forms on plain torch: inputs, baselines, targets, additional forward
arguments, the forward call, the shape of what comes back, and the base classes.

Written from Captum's documented behaviour (and read against its source for the corner
cases); nothing here imports Captum.
"""
from __future__ import annotations

import functools
import inspect
import math
import sys
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.futures import Future

TensorOrTuple = Union[Tensor, tuple[Tensor, ...]]
Baselines = Union[None, Tensor, int, float, tuple[Union[Tensor, int, float], ...]]
TargetType = Union[None, int, tuple[int, ...], Tensor, list]


class CaptumArgumentError(ValueError, AssertionError):
    """A bad argument, named in the message. A ``ValueError``; also an
    ``AssertionError``, the type Captum's own argument checks raise, so code written
    against Captum that catches those keeps working."""


class CaptumTypeError(TypeError, AssertionError):
    """An argument of the wrong type, named in the message (a ``TypeError``, and an
    ``AssertionError`` as Captum's checks raise)."""


def public(fn: Callable) -> Callable:
    """Give an ``attribute`` method Captum's ``__wrapped__`` (its ``NoiseTunnel`` and
    ``GuidedGradCam`` call ``method.attribute.__wrapped__(method, ...)``), so these
    classes can also be handed to Captum's own wrappers."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


# ---- inputs ---------------------------------------------------------------------------


def input_tuple(inputs: Any, name: str = "inputs") -> tuple[tuple[Tensor, ...], bool]:
    """A tensor or a tuple of tensors -> (the tuple, whether it was one). All tensors share
    the batch size (their first dimension)."""
    is_tuple = isinstance(inputs, tuple)
    xs = inputs if is_tuple else (inputs,)
    if not xs:
        raise CaptumArgumentError(f"{name} must be a tensor or a non-empty tuple of tensors, got ()")
    for i, x in enumerate(xs):
        if not isinstance(x, Tensor):
            where = f"{name}[{i}]" if is_tuple else name
            raise CaptumTypeError(f"{where} must be a torch.Tensor (or {name} a tuple of tensors), got {type(x).__name__}")
        if x.dim() == 0:
            where = f"{name}[{i}]" if is_tuple else name
            raise CaptumArgumentError(f"{where} must have a batch dimension (its first), got a 0-d tensor")
    n = xs[0].shape[0]
    for i, x in enumerate(xs[1:], 1):
        if x.shape[0] != n:
            raise CaptumArgumentError(
                f"{name}: every tensor must have the same batch size (first dimension); {name}[0] has {n}, "
                f"{name}[{i}] has {x.shape[0]}")
    return tuple(xs), is_tuple


def check_differentiable(xs: Sequence[Tensor], name: str = "inputs") -> None:
    for i, x in enumerate(xs):
        if not (x.is_floating_point() or x.is_complex()):
            where = f"{name}[{i}]" if len(xs) > 1 else name
            raise CaptumTypeError(f"{where} must be a floating-point tensor for a gradient method, got dtype {x.dtype}")


def format_output(is_tuple: bool, outs: Sequence[Tensor]) -> TensorOrTuple:
    """A tuple for a tuple input, the single tensor otherwise (Captum's return shape)."""
    outs = tuple(outs)
    return outs if is_tuple else outs[0]


def args_tuple(additional_forward_args: Any) -> Optional[tuple]:
    if additional_forward_args is None:
        return None
    return additional_forward_args if isinstance(additional_forward_args, tuple) else (additional_forward_args,)


def expand_args(args: Optional[tuple], copies: int, interleave: bool = False) -> Optional[tuple]:
    """Every tensor argument with a first dimension repeated ``copies`` times along it:
    copy-major (``cat([a] * copies)``, the perturbation and integration batches) or
    ``repeat_interleave`` (NoiseTunnel's samples); other arguments unchanged."""
    if args is None or copies == 1:
        return args
    out = []
    for a in args:
        if isinstance(a, Tensor) and a.dim() > 0:
            a = a.repeat_interleave(copies, dim=0) if interleave else a.repeat(copies, *([1] * (a.dim() - 1)))
        out.append(a)
    return tuple(out)


def repeat_batch(x: Tensor, copies: int) -> Tensor:
    return x if copies == 1 else x.repeat(copies, *([1] * (x.dim() - 1)))


# ---- targets --------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_target(target: TargetType, batch: int) -> None:
    """Captum's target forms, checked before any work: None; an int (or a 1-element
    integer tensor): that output index for every sample; a tuple of ints: an index into
    a multi-dimensional output per sample; a list (one int or one tuple per sample) or a
    1-D integer tensor of ``batch`` values."""
    if target is None or _is_int(target):
        return
    if isinstance(target, tuple):
        if not all(_is_int(t) for t in target):
            raise CaptumTypeError(f"target: a tuple target must hold ints (one index per output dimension), got {target!r}")
        return
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise CaptumTypeError(f"target must be an integer tensor, got dtype {target.dtype}")
        if target.numel() == 1:
            return
        if target.dim() != 1 or target.numel() != batch:
            raise CaptumArgumentError(
                f"target: a tensor target must hold one index or one per sample, shape ({batch},), got {tuple(target.shape)}")
        return
    if isinstance(target, list):
        if len(target) != batch:
            raise CaptumArgumentError(f"target: a list target must have one entry per sample ({batch}), got {len(target)}")
        if all(_is_int(t) for t in target):
            return
        if all(isinstance(t, tuple) and all(_is_int(i) for i in t) for t in target):
            return
        raise CaptumTypeError("target: a list target must hold ints or tuples of ints (one per sample), got "
                              f"{[type(t).__name__ for t in target]}")
    raise CaptumTypeError(
        f"target must be None, an int, a tuple of ints, a list or an integer tensor, got {type(target).__name__}")


def expand_target(target: TargetType, copies: int, interleave: bool = False) -> TargetType:
    """A per-sample target (a list, or a tensor of several values) for ``copies`` copies of
    the batch, copy-major or interleaved; a target shared by every sample is unchanged."""
    if copies == 1:
        return target
    if isinstance(target, list):
        return [t for t in target for _ in range(copies)] if interleave else target * copies
    if isinstance(target, Tensor) and target.numel() > 1:
        return target.repeat_interleave(copies, dim=0) if interleave else target.repeat(copies)
    return target


def _index_check(output: Tensor, index: Sequence[int], what: str) -> None:
    if len(index) > output.dim() - 1:
        raise CaptumArgumentError(
            f"target {what} indexes {len(index)} output dimension(s) after the batch one, but the output has shape "
            f"{tuple(output.shape)}")
    for d, i in enumerate(index):
        size = output.shape[d + 1]
        if not -size <= i < size:
            raise CaptumArgumentError(f"target {what}: index {i} is out of range for output dimension {d + 1} "
                                      f"of size {size} (output shape {tuple(output.shape)})")


def select_targets(output: Tensor, target: TargetType) -> Tensor:
    """The scores a target picks from the model output (Captum's rules)."""
    if target is None:
        return output
    if type(target) is int and output.dim() >= 2 and -output.shape[1] <= target < output.shape[1]:
        return output.select(1, target)  # the common case, without the general checks
    if isinstance(target, Tensor) and target.numel() == 1:
        target = int(target.item())
    if _is_int(target) or isinstance(target, tuple):
        index = (target,) if _is_int(target) else target
        _index_check(output, index, repr(target))
        return output[(slice(None), *index)]
    n = output.shape[0] if output.dim() else 0
    if isinstance(target, Tensor):
        idx = target.to(device=output.device, dtype=torch.long).reshape(-1)
    elif all(_is_int(t) for t in target):
        idx = torch.tensor(target, dtype=torch.long, device=output.device)
    else:  # a list of tuples: one multi-dimensional index per sample
        if len(target) != n:
            raise CaptumArgumentError(f"target: {len(target)} entries for a model output of {n} rows")
        for t in target:
            _index_check(output, t, repr(t))
        return torch.stack([output[(i, *t)] for i, t in enumerate(target)])
    if output.dim() != 2:
        raise CaptumArgumentError(
            f"target: one class per sample needs a 2-D model output (N, num_classes), got shape {tuple(output.shape)}")
    if idx.numel() != n:
        raise CaptumArgumentError(f"target: {idx.numel()} indices for a model output of {n} rows")
    k = output.shape[1]
    bad = (idx < 0) | (idx >= k)
    if bool(bad.any()):
        raise CaptumArgumentError(f"target must be in [0, {k}) for a model with {k} outputs, got {idx[bad].tolist()}")
    return output.gather(1, idx[:, None])[:, 0]


# ---- the forward call -----------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _takes_no_arguments_cached(fn: Any) -> bool:
    return _takes_no_arguments(fn)


def _takes_no_arguments(fn: Any) -> bool:
    try:
        return len(inspect.signature(fn).parameters) == 0
    except (TypeError, ValueError):
        return False


def takes_no_arguments(fn: Any) -> bool:
    try:
        return _takes_no_arguments_cached(fn)
    except TypeError:  # unhashable callable
        return _takes_no_arguments(fn)


def call_forward(forward_func: Callable, inputs: Sequence[Any], args: Optional[tuple]) -> Any:
    """``forward_func(*inputs, *additional_forward_args)`` (no arguments at all for a
    forward that takes none, as Captum)."""
    if takes_no_arguments(forward_func):
        return forward_func()
    return forward_func(*inputs, *(args or ()))


def resolve(output: Any, allow_future: bool) -> Any:
    """The value of a forward's ``torch.futures.Future`` (for ``attribute_future``)."""
    if isinstance(output, Future):
        if not allow_future:
            raise CaptumTypeError("forward_func returned a torch.futures.Future: call attribute_future instead of attribute")
        output = output.wait()
    return output


def forward_scores(forward_func: Callable, inputs: Sequence[Any], target: TargetType, args: Optional[tuple],
                   *, allow_future: bool = False, allow_number: bool = False) -> Tensor:
    """The model's selected output as a tensor (a Python number becomes one when
    ``allow_number``: perturbation methods accept a forward returning a scalar)."""
    out = resolve(call_forward(forward_func, inputs, args), allow_future)
    if isinstance(out, Tensor):
        return select_targets(out, target)
    if allow_number and isinstance(out, (int, float)) and not isinstance(out, bool):
        if target is not None:
            raise CaptumArgumentError("target must be None for a forward_func that returns a Python number")
        return torch.tensor(out, dtype=torch.int64 if isinstance(out, int) else torch.float64)
    kind = "a tensor, int or float" if allow_number else "a tensor"
    raise CaptumTypeError(f"forward_func must return {kind}, got {type(out).__name__}")


def check_one_score_per_sample(out: Tensor) -> None:
    if out.dim() > 1 and out[0].numel() != 1:
        raise CaptumArgumentError(
            f"target: the selected model output has shape {tuple(out.shape)}, more than one value per sample; give a "
            "target that picks one (e.g. the class index)")


# ---- baselines ------------------------------------------------------------------------


def baselines_tuple(baselines: Baselines, xs: Sequence[Tensor], name: str = "baselines") -> tuple:
    """None (zeros; False for bool inputs), one value, or a tuple with one per input; each a
    tensor or a number."""
    if baselines is None:
        return tuple(False if x.dtype == torch.bool else 0 for x in xs)
    b = baselines if isinstance(baselines, tuple) else (baselines,)
    if len(b) != len(xs):
        raise CaptumArgumentError(f"{name}: give one baseline per input tensor ({len(xs)}), got {len(b)}")
    for i, v in enumerate(b):
        if not isinstance(v, (Tensor, int, float)):
            where = f"{name}[{i}]" if len(b) > 1 else name
            raise CaptumTypeError(f"{where} must be a tensor or a number, got {type(v).__name__}")
        if isinstance(v, float) and not math.isfinite(v):
            raise CaptumArgumentError(f"{name} must be finite, got {v}")
    return b


def broadcast_baseline(b: Union[Tensor, int, float], x: Tensor, name: str) -> Tensor:
    """A baseline value or tensor as a tensor broadcastable to ``x`` (N, ...): kept with a
    batch of 1 where it has none, so ``(C, H, W)``, ``(1, C, H, W)`` and ``(N, C, H, W)``
    all work."""
    if not isinstance(b, Tensor):
        return torch.full((1,) * x.dim(), b, dtype=x.dtype, device=x.device)
    t = b.to(x.device)
    if t.dim() > x.dim():
        raise CaptumArgumentError(f"{name}: a baseline of shape {tuple(t.shape)} for an input of shape {tuple(x.shape)}")
    t = t.reshape((1,) * (x.dim() - t.dim()) + tuple(t.shape))
    if any(s not in (1, d) for s, d in zip(t.shape, x.shape)):
        raise CaptumArgumentError(
            f"{name}: shape {tuple(b.shape)} does not broadcast to the input's shape {tuple(x.shape)}")
    return t


# ---- progress -------------------------------------------------------------------------


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress(enabled: bool, desc: str, total: int):
    """A tqdm bar on stderr (Captum's "<Method Name> attribution" label), or nothing."""
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(desc=desc, total=total, file=sys.stderr)


def finish(bar) -> None:
    """Close a progress bar at 100% of the evaluations that ran (their count can fall
    short of the estimate when steps are skipped)."""
    if hasattr(bar, "n") and bar.n != bar.total:
        bar.total = bar.n
        bar.refresh()
    bar.close()


# ---- base classes ---------------------------------------------------------------------


class Attribution:
    """Captum's ``Attribution`` interface: ``forward_func``, ``attribute``,
    ``multiplies_by_inputs``, ``has_convergence_delta``, ``get_name``."""

    def __init__(self, forward_func: Callable) -> None:
        if not callable(forward_func):
            raise CaptumTypeError(f"forward_func must be callable (a model or a function), got {type(forward_func).__name__}")
        self.forward_func = forward_func

    @property
    def multiplies_by_inputs(self) -> bool:
        """Whether the attributions are multiplied by the inputs (minus the baselines),
        Captum's flag for its metrics: False for the plain gradient methods."""
        return False

    def has_convergence_delta(self) -> bool:
        """Whether ``attribute`` can also return a convergence delta
        (``return_convergence_delta=True``)."""
        return False

    def attribute_future(self, *args: Any, **kwargs: Any) -> Any:
        """`attribute` for a forward returning ``torch.futures.Future`` values; a
        ``NotImplementedError`` except where a class overrides it (the Shapley methods)."""
        raise NotImplementedError(f"attribute_future is not implemented for {type(self).__name__}")

    @classmethod
    def get_name(cls) -> str:
        """The class name split at capitals ("ShapleyValueSampling" -> "Shapley Value Sampling")."""
        return "".join(c if c.islower() or i == 0 else " " + c for i, c in enumerate(cls.__name__))


class GradientAttribution(Attribution):
    """Gradient methods; ``compute_convergence_delta`` as Captum's."""

    @public
    def compute_convergence_delta(self, attributions: TensorOrTuple, start_point: Baselines, end_point: TensorOrTuple,
                                  target: TargetType = None, additional_forward_args: Any = None) -> Tensor:
        """Per sample: the sum of the attributions minus ``f(end_point) - f(start_point)``
        (completeness: 0 for exact integrated gradients)."""
        ends, _ = input_tuple(end_point, "end_point")
        attrs, _ = input_tuple(attributions, "attributions")
        starts = baselines_tuple(start_point, ends, "start_point")
        check_baselines_like_inputs(ends, starts, "start_point")
        for a, e in zip(attrs, ends):
            if a.shape[0] != e.shape[0]:
                raise CaptumArgumentError(f"attributions and end_point must match in their first dimension, got "
                                          f"{a.shape[0]} and {e.shape[0]}")
        n = ends[0].shape[0]
        check_target(target, n)
        args = args_tuple(additional_forward_args)
        starts_t = tuple(full_baseline(b, e) for b, e in zip(starts, ends))
        with torch.no_grad():
            start_out = forward_scores(self.forward_func, starts_t, target, args)
            end_out = forward_scores(self.forward_func, ends, target, args)
            attr_sum = sum(a.reshape(a.shape[0], -1).sum(1) for a in attrs)
            return attr_sum - (end_out.reshape(n, -1).sum(1) - start_out.reshape(n, -1).sum(1))


class PerturbationAttribution(Attribution):
    """Perturbation methods (occlusion, Shapley values): attributions are output changes,
    so ``multiplies_by_inputs`` is True."""

    @property
    def multiplies_by_inputs(self) -> bool:
        """True: a perturbation method's attributions already scale with the inputs."""
        return True


def check_baselines_like_inputs(xs: Sequence[Tensor], bs: Sequence[Any], name: str = "baselines") -> None:
    """Captum's rule for the gradient methods: a number, a tensor of the input's shape, or
    one with a batch of 1 (broadcast to every sample)."""
    for i, (x, b) in enumerate(zip(xs, bs)):
        if isinstance(b, Tensor) and not (b.shape == x.shape or (b.dim() == x.dim() and b.shape[0] == 1
                                                                   and b.shape[1:] == x.shape[1:])):
            where = f"{name}[{i}]" if len(xs) > 1 else name
            raise CaptumArgumentError(f"{where} must be a number, a tensor of the input's shape {tuple(x.shape)} or "
                                      f"one with a batch of 1, got shape {tuple(b.shape)}")


def full_baseline(b: Union[Tensor, int, float], x: Tensor) -> Tensor:
    """A baseline as a tensor with the input's batch (Captum's tensorised baseline: a number
    fills the input's shape and dtype; a batch of 1 is repeated)."""
    if not isinstance(b, Tensor):
        return torch.full_like(x, b)
    if b.shape[0] == 1 and x.shape[0] > 1:
        return b.expand(x.shape[0], *b.shape[1:])
    return b
