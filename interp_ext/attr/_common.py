"""Argument handling shared by every attribution method: inputs, targets, gradients, the
model's output and its train / eval mode."""
from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Iterator, Optional, Sequence, Union

import torch
from torch import nn

Target = Union[None, int, Sequence[int], torch.Tensor]


def check_inputs(inputs: torch.Tensor, *, name: str = "inputs", min_dim: int = 2, model: Optional[nn.Module] = None) -> None:
    """Reject what no method can attribute, before the model runs: not a floating-point
    tensor, no batch dimension, an empty batch, NaN or inf values; with ``model``, also
    inputs the model cannot take (`check_model_inputs`)."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(inputs).__name__}")
    if not inputs.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {inputs.dtype}")
    if inputs.dim() < min_dim:
        hint = f": for one sample, add the batch dimension with {name}[None]" if inputs.dim() == min_dim - 1 else ""
        raise ValueError(
            f"{name} must be batched with at least {min_dim} dimensions (N, ...), got shape {tuple(inputs.shape)}{hint}"
        )
    if inputs.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one sample, got shape {tuple(inputs.shape)}")
    check_finite(inputs, name)
    if model is not None:
        check_model_inputs(model, inputs, name)


def check_finite(t: torch.Tensor, name: str) -> None:
    """A ValueError naming `name` and what it holds (NaN, inf or both) unless every value
    is finite."""
    if not bool(torch.isfinite(t).all()):
        has_nan, has_inf = bool(torch.isnan(t).any()), bool(torch.isinf(t).any())
        what = "NaN and inf" if has_nan and has_inf else "NaN" if has_nan else "inf"
        raise ValueError(f"{name} contains {what}: every value must be finite")


def check_model_inputs(model: Any, inputs: torch.Tensor, name: str = "inputs") -> None:
    """What the model's own layers would refuse with PyTorch's message, named here before
    any forward: ``inputs`` in another dtype than the model's parameters (when they all
    share one and autocast is off), and one unbatched sample, i.e. ``(C, H, W)`` for a
    model whose first convolution is a ``Conv2d`` with C input channels (likewise for
    ``Conv1d`` / ``Conv3d``)."""
    if not isinstance(model, nn.Module):
        return
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) == 1 and not torch.is_autocast_enabled(inputs.device.type):
        (dtype,) = dtypes
        if inputs.dtype != dtype:
            raise TypeError(
                f"{name} must have the model's dtype {dtype}, got {inputs.dtype}: convert them with "
                f"{name}.to({dtype}) (or the model with model.to({inputs.dtype}))"
            )
    conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if conv is not None:
        spatial = len(conv.kernel_size)
        if inputs.dim() == spatial + 1 and inputs.shape[0] == conv.in_channels:
            want = ("N", "C", *("D", "H", "W")[3 - spatial :])
            raise ValueError(
                f"{name} must be batched, ({', '.join(want)}) for a model whose first layer is "
                f"{type(conv).__name__}, got shape {tuple(inputs.shape)} (one sample?): add the batch "
                f"dimension with {name}[None]"
            )


def model_output(output: Any) -> torch.Tensor:
    """The model's output, checked to be one tensor of scores: the same TypeError in every
    method for a model that returns a tuple, a list or a dict."""
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"the model must return a tensor of scores (N, num_classes), got {type(output).__name__}: wrap it "
            "in a module whose forward returns the one output to attribute (e.g. the logits of a tuple or dict)"
        )
    return output


def _module_of(obj: Any) -> Optional[nn.Module]:
    if isinstance(obj, nn.Module):
        return obj
    inner = getattr(obj, "model", None)
    return inner if isinstance(inner, nn.Module) else None


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Run ``model`` (an ``nn.Module``, or an object with one as ``.model``) in eval mode:
    BatchNorm uses and keeps its running statistics, Dropout is off. Every submodule's
    ``training`` flag is restored exactly afterwards (a mix of train and eval included),
    also when the block raises. Anything else passes through untouched."""
    module = _module_of(model)
    if module is None:
        yield
        return
    flags = [(m, m.training) for m in module.modules()]
    if not any(t for _, t in flags):
        yield
        return
    try:
        module.eval()
        yield
    finally:
        for m, training in flags:
            m.training = training


def in_eval_mode(fn):
    """Decorator: ``fn`` runs with its first argument (a model, a ``LoadedModel``, or a
    method object holding ``.model``; given by position or by name) in `eval_mode`."""
    first_name = next(iter(inspect.signature(fn).parameters))

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with eval_mode(args[0] if args else kwargs.get(first_name)):
            return fn(*args, **kwargs)

    return wrapper


def normalize_target(target: Target, batch: int, device: torch.device) -> Optional[torch.Tensor]:
    """An int, a sequence or a tensor -> a (batch,) int64 tensor on `device`; None stays
    None (top-1, resolved once the logits exist). Range is checked by `resolve_target`."""
    if target is None:
        return None
    if isinstance(target, bool):
        raise TypeError("target must be an int, a sequence of ints or an integer tensor, got bool")
    if isinstance(target, int):
        return torch.full((batch,), target, dtype=torch.long, device=device)
    if isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target must be an integer tensor, got dtype {target.dtype}")
        if target.dim() == 0:
            return target.to(device=device, dtype=torch.long).expand(batch).clone()
        if target.dim() != 1 or target.shape[0] != batch:
            raise ValueError(f"target must have one class per sample, shape ({batch},), got {tuple(target.shape)}")
        return target.to(device=device, dtype=torch.long)
    if isinstance(target, Sequence) and not isinstance(target, (str, bytes)):
        if len(target) != batch or not all(isinstance(t, int) and not isinstance(t, bool) for t in target):
            raise ValueError(f"target must list one int class per sample ({batch}), got {list(target)!r}")
        return torch.tensor(list(target), dtype=torch.long, device=device)
    raise TypeError(f"target must be None, an int, a sequence of ints or an integer tensor, got {type(target).__name__}")


def resolve_target(target: Optional[torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
    """Validate the model output and turn `target` into per-sample class indices."""
    if logits.dim() != 2:
        raise ValueError(f"the model must return (N, num_classes) scores, got shape {tuple(logits.shape)}")
    if target is None:
        return logits.detach().argmax(dim=1)
    check_index_range(target, logits.shape[1])
    return target


def check_index_range(t: torch.Tensor, limit: int, name: str = "target", what: Optional[str] = None) -> None:
    """Every value of `t` in [0, limit), else a ValueError naming the argument and the
    out-of-range values (`what`: where the limit comes from)."""
    bad = (t < 0) | (t >= limit)
    if bad.any():
        raise ValueError(f"{name} must be in [0, {limit}) for {what or f'a model with {limit} outputs'}, got {t[bad].tolist()}")


def input_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    target: Target,
    context: contextlib.AbstractContextManager | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """d logit[target] / d inputs for every sample, and the logits.

    Asks autograd for the input gradient only (no weight gradients, parameters'
    `.grad` untouched). `context` wraps the forward pass (e.g. a rectifier mode). The
    model runs in eval mode (`eval_mode`: its flags restored after).
    """
    check_inputs(inputs, model=model)
    target_t = normalize_target(target, inputs.shape[0], inputs.device)
    x = inputs.detach().requires_grad_(True)
    with eval_mode(model), torch.enable_grad(), (context or contextlib.nullcontext()):
        logits = model_output(model(x))
    idx = resolve_target(target_t, logits)
    score = logits.gather(1, idx[:, None]).sum()
    (grad,) = torch.autograd.grad(score, x)
    return grad, logits.detach()
